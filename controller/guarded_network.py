"""Calls a plan makes connect only to addresses that may be called.

The URL policy (``controller.url_policy``) judges each URL's host as written, when a
rollout starts; it does not resolve names, so a name whose DNS record points at a
cloud metadata or link-local address would pass it, whether the record says so at
start or only later (DNS rebinding). This closes that gap where it can be closed: at
the moment of connecting. The backend resolves the name itself, refuses the
connection when any address the name resolves to is one no plan may call, and then
connects to an address it checked, so a second lookup cannot answer differently.

Every client that calls a plan's URLs (checks, the soak's load, hooks,
notifications, the slots' version check) is built with ``guarded_transport``. URLs
only an operator's settings or command line give (the incident webhook, the API
for the CLI, ``plan validate --check-against``) are not plan input and go out as
configured.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from controller.url_policy import parse_host, refusal


class RefusedAddress(httpcore.ConnectError):
    """The host resolved to an address no plan may call; httpx reports it as a
    ``ConnectError`` with this message."""


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection, in the resolver's order."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses: list[str] = []
    for *_, sockaddr in found:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def address_refusal(host: str, address: str) -> str | None:
    """Why connecting to ``address`` (what ``host`` resolved to) is refused; or None."""
    why = refusal(parse_host(address.split("%", 1)[0]))
    if why is None:
        return None
    return f"host {host} resolves to {address}, " + why.split(" is ", 1)[1]


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's own network backend, resolving and checking before it connects."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port)
        for address in addresses:
            why = address_refusal(host, address)
            if why is not None:
                raise RefusedAddress(why)
        failure: Exception | None = None
        for address in addresses:  # as socket.create_connection would try them
            try:
                return super().connect_tcp(
                    address, port, timeout, local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # getaddrinfo never answers an empty list
        raise failure


def guarded_transport(**options: Any) -> httpx.HTTPTransport:
    """An httpx transport (``options`` as ``httpx.HTTPTransport`` takes them) whose
    connections go through ``GuardedBackend``. httpx has no parameter for the network
    backend, so it is set on the transport's connection pool, before any connection
    is made (connections take the pool's backend when they are created)."""
    transport = httpx.HTTPTransport(**options)
    pool = transport._pool  # noqa: SLF001
    # Fail loudly, never quietly unguarded, if httpx or httpcore change these names.
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError(
            f"httpx {httpx.__version__} / httpcore {httpcore.__version__}: cannot set the "
            "connection pool's network backend; plan URLs would not be guarded"
        )
    pool._network_backend = GuardedBackend()  # noqa: SLF001
    return transport


def plan_client(**options: Any) -> httpx.Client:
    """A client for a plan's URLs: guarded connections, no proxies from the
    environment, no redirects followed (a redirect to another host is not what the
    plan named); ``options`` as ``httpx.Client`` takes them (a timeout)."""
    return httpx.Client(
        trust_env=False, follow_redirects=False, transport=guarded_transport(), **options
    )
