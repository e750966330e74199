"""Where a rollout may send requests (SSRF): the hosts of a plan's URLs, checked at
start against an allow-list from the settings.

A plan's checks, hooks and notifications make the workers send HTTP requests; the
variables a start may override fill those URLs in. Without a check, whoever can start
a rollout could point the disable hook at an internal admin endpoint or at the
cloud's metadata address, and the worker would call it with its own network
position.

Every decision is taken on the host as the resolver would read it, not as written:
lower-cased, one trailing dot dropped (``metadata.google.internal.`` is the same
name), an IPv4 address in any form ``inet_aton`` accepts (``2852039166``,
``0xa9fea9fe``, ``0251.0376.0251.0376``, ``169.254.43518`` are all
169.254.169.254, and the resolver connects to it), and the IPv4 address inside an
IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``) or NAT64
(``64:ff9b::a.b.c.d``) IPv6 address. A host that is neither an address nor a plain
ASCII name (letters, digits, ``-``, ``_``, dots; an IDN in its ``xn--`` form) is
refused. Then, whatever the allow-list says:

- the cloud metadata addresses (:data:`METADATA_ADDRESSES`) and every link-local
  address (169.254.0.0/16, fe80::/10) are refused;
- the metadata host names (:data:`METADATA_HOSTS`) are refused;
- with ``CANARY_ALLOWED_URL_HOSTS`` set (comma-separated host names with ``*``
  wildcards, IP addresses, or networks such as ``10.0.0.0/8``), a URL's host must
  match one of them: an address by the networks and addresses listed, a name by the
  name patterns.

Host names are not resolved here. Resolving at start would not protect anyway: the
workers resolve again when they call, minutes or hours later, and the answer may
have changed (DNS rebinding); it would also make every start wait on DNS, and
refuse plans whose names have no record yet. A name that resolves to a metadata or
link-local address is caught when a worker connects (``controller.guarded_network``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from config.host_lists import parse_allowed_hosts

if TYPE_CHECKING:
    from controller.plan import Plan

#: Names under which clouds serve instance metadata (and credentials).
METADATA_HOSTS = frozenset(
    {
        "metadata",  # GCP, through the instance's search domain
        "metadata.google.internal",  # GCP
        "metadata.azure.internal",  # Azure
        "instance-data",  # AWS, through the instance's search domain
        "instance-data.ec2.internal",  # AWS
    }
)

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Addresses where clouds serve instance metadata, and whose.
METADATA_ADDRESSES: dict[_Address, str] = {
    ipaddress.ip_address("169.254.169.254"): "AWS, GCP, Azure, OpenStack, Oracle",
    ipaddress.ip_address("169.254.170.2"): "AWS ECS task metadata",
    ipaddress.ip_address("100.100.100.200"): "Alibaba Cloud",
    ipaddress.ip_address("fd00:ec2::254"): "AWS over IPv6",
    ipaddress.ip_address("192.0.0.192"): "Oracle Cloud Classic",
    ipaddress.ip_address("168.63.129.16"): "Azure WireServer",
}

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_IPV4_FORM = re.compile(r"[0-9a-fx.]+")


@dataclass(frozen=True)
class Host:
    """A URL's host as written, and what a resolver makes of it."""

    written: str  # lower-cased, IPv6 in brackets: what error messages show
    name: str  # lower-cased, without a trailing dot
    address: _Address | None  # the address it denotes (IPv4 unwrapped), or None for a name

    def shown(self) -> str:
        """``host 0xa9fea9fe is 169.254.169.254`` or ``host 10.0.0.1``."""
        if self.address is not None and str(self.address) != self.written.strip("[]"):
            return f"host {self.written} is {self.address},"
        return f"host {self.written} is"


def parse_host(host: str) -> Host:
    """The host of a URL (as ``urlsplit().hostname`` gives it, without brackets) as a
    resolver reads it; raises ValueError saying why it is not a host."""
    host = host.lower()
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"host [{host}] is not an IPv6 address") from None
        return Host(f"[{host}]", host, _unwrap(address))
    name = host[:-1] if host.endswith(".") else host
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"host {host} is not a host name (ASCII letters, digits, '-', '_' and dots; "
            "an international name in its xn-- form)"
        )
    return Host(host, name, _ipv4(name))


def _ipv4(name: str) -> ipaddress.IPv4Address | None:
    """The address of an IPv4 literal in any form the resolver accepts (inet_aton:
    dotted, integer, hex, octal, two or three parts), or None for a name."""
    if not _IPV4_FORM.fullmatch(name):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


def _unwrap(address: ipaddress.IPv6Address) -> _Address:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64), or itself."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    value = int(address)  # without a zone (%eth0), which changes no address
    if 1 < value < 2**32:  # ::a.b.c.d, not :: or ::1
        return ipaddress.IPv4Address(value)
    if ipaddress.IPv6Address(value) in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return address


def refusal(host: Host) -> str | None:
    """Why ``host`` is never called, whatever the allow-list says; or None."""
    if host.address is not None:
        cloud = METADATA_ADDRESSES.get(_without_scope(host.address))
        if cloud is not None:
            return f"{host.shown()} a cloud metadata address ({cloud}): refused"
        if host.address.is_link_local:
            return f"{host.shown()} a link-local address: refused"
    elif host.name in METADATA_HOSTS:
        return f"{host.shown()} a cloud metadata host name: refused"
    return None


def _without_scope(address: _Address) -> _Address:
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return ipaddress.IPv6Address(int(address))
    return address


class HostPolicy:
    """Decides whether a URL's host may be called by the workers."""

    def __init__(self, allowed: Sequence[str] = ()):
        self.allowed = list(allowed)
        self._networks: list[_Network] = []
        self._names: list[str] = []
        for entry in self.allowed:
            if "/" in entry:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            address = _entry_address(entry)
            if address is not None:
                self._networks.append(ipaddress.ip_network(address))
            else:
                self._names.append(entry.removesuffix("."))

    @classmethod
    def from_setting(cls, text: str) -> HostPolicy:
        return cls(parse_allowed_hosts(text))

    def problem(self, url: str) -> str | None:
        """Why the workers must not call ``url``, or None."""
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError as exc:
            return f"{url!r} is not a URL ({exc})"
        if parts.scheme not in ("http", "https"):
            return f"{url!r} is not an http(s) URL"
        if not hostname:
            return f"{url!r} has no host"
        try:
            host = parse_host(hostname)
        except ValueError as exc:
            return f"{exc}: refused"
        refused = refusal(host)
        if refused is not None:
            return refused
        if not self.allowed or self._allows(host):
            return None
        return f"{host.shown()} not among the allowed hosts ({', '.join(self.allowed)})"

    def _allows(self, host: Host) -> bool:
        if host.address is not None:
            address = _without_scope(host.address)
            if any(address in network for network in self._networks):
                return True
            return any(fnmatchcase(str(address), pattern) for pattern in self._names)
        return any(fnmatchcase(host.name, pattern) for pattern in self._names)


def _entry_address(entry: str) -> _Address | None:
    """The address an allow-list entry names, read as a URL's host would be."""
    try:
        return parse_host(entry.strip("[]")).address
    except ValueError:
        return None


def plan_urls(plan: Plan, values: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Every URL a rollout of ``plan`` would call, rendered with its ``values``, with
    the field path it comes from."""
    yield from _urls(plan.model_dump(mode="json", exclude={"variables", "overridable"}), "", values)


def _urls(node: Any, path: str, values: dict[str, str]) -> Iterator[tuple[str, str]]:
    # Imported here: plans import notifications, whose connections this module guards
    # (controller.guarded_network), so the host checks must load without plans.
    from controller.plan import render_template

    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            is_url_field = key == "url" or str(key).endswith("_url") or path.endswith("slot_urls")
            if isinstance(value, str) and is_url_field:
                yield where, render_template(value, values)
            else:
                yield from _urls(value, where, values)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _urls(item, f"{path}[{index}]", values)


def url_problems(plan: Plan, values: dict[str, str], policy: HostPolicy) -> list[str]:
    """``field: problem`` for every URL of the plan the policy refuses."""
    return [
        f"{where}: {problem}"
        for where, url in plan_urls(plan, values)
        for problem in [policy.problem(url)]
        if problem
    ]
