"""Connections to a plan's URLs are checked where the name is resolved: a name whose
record points at a cloud metadata or link-local address is refused when connecting,
whatever it looked like when the rollout started, and the connection goes to the
address that was checked. The resolver is scripted; the connections are real."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from controller import checks
from controller.guarded_network import plan_client
from controller.http_client import shared_client
from controller.plan import HttpCheck

real_getaddrinfo = socket.getaddrinfo


class Resolver:
    """Names under ``.test`` answered from a table; everything else as usual."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: object, *args: object, **kwargs: object) -> list:
        if isinstance(host, str) and host.endswith(".test"):
            self.asked.append(host)
            if host not in self.table:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            answers = []
            for address in self.table[host]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
                answers.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return answers
        return real_getaddrinfo(host, port, *args, **kwargs)


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """A real HTTP server on loopback that records the Host header it was sent."""
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hosts.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], hosts
    httpd.shutdown()
    httpd.server_close()


def resolving(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> Resolver:
    resolver = Resolver(table)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        (["169.254.169.254"], "169.254.169.254, a cloud metadata address"),
        (["127.0.0.1", "169.254.170.2"], "169.254.170.2, a cloud metadata address"),
        (["169.254.10.1"], "169.254.10.1, a link-local address"),
        (["fd00:ec2::254"], "fd00:ec2::254, a cloud metadata address"),
        (["::ffff:169.254.169.254"], "::ffff:169.254.169.254, 169.254.169.254, a cloud"),
    ],
)
def test_a_name_resolving_to_a_refused_address_is_never_connected(
    monkeypatch: pytest.MonkeyPatch, answers: list[str], refused: str
) -> None:
    resolving(monkeypatch, {"innocent.test": answers})
    with plan_client(timeout=2) as client, pytest.raises(httpx.ConnectError) as caught:
        client.get("http://innocent.test/latest/meta-data/")
    assert str(caught.value).startswith(f"host innocent.test resolves to {refused}")
    assert str(caught.value).endswith(": refused")


def test_an_allowed_name_connects_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch, server: tuple[int, list[str]]
) -> None:
    port, hosts = server
    resolver = resolving(monkeypatch, {"checkout.test": ["127.0.0.1"]})
    with plan_client(timeout=2) as client:
        assert client.get(f"http://checkout.test:{port}/").text == "ok"
    assert hosts == [f"checkout.test:{port}"]  # the name is still what the service sees
    assert resolver.asked == ["checkout.test"]  # resolved once: no second answer to trust


def test_every_plan_facing_client_is_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared client (slots' version checks) and the HTTP checks refuse it too,
    as a failed check that says why."""
    resolving(monkeypatch, {"rebound.test": ["169.254.169.254"]})
    with pytest.raises(httpx.ConnectError, match="rebound.test resolves to 169.254.169.254"):
        shared_client().get("http://rebound.test/version", timeout=2)
    check = HttpCheck(name="journey", url="http://rebound.test/checkout")
    (result,) = checks.run_http([check], {})
    assert not result.ok
    assert "rebound.test resolves to 169.254.169.254, a cloud metadata address" in result.detail


def test_a_name_that_does_not_resolve_is_an_ordinary_connect_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolving(monkeypatch, {})
    refused = pytest.raises(httpx.ConnectError, match="cannot resolve gone.test")
    with plan_client(timeout=2) as client, refused:
        client.get("http://gone.test/")
