"""Where a rollout may send requests (SSRF): the hosts of a plan's URLs, checked at
start against an allow-list from the settings.

A plan's checks, hooks and notifications make the workers send HTTP requests; the
variables a start may override fill those URLs in. Without a check, whoever can start
a rollout could point the disable hook at an internal admin endpoint or at the
cloud's metadata address, and the worker would call it with its own network
position. So:

- link-local addresses (169.254.0.0/16, fe80::/10: where clouds serve instance
  credentials) and the metadata host names are always refused;
- with ``CANARY_ALLOWED_URL_HOSTS`` set (comma-separated host names with ``*``
  wildcards, IP addresses, or networks such as ``10.0.0.0/8``), a URL's host must
  match one of them.

Host names are compared as written, not resolved: a name that resolves to a
forbidden address is the DNS operator's decision, outside this check.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from controller.plan import Plan, render_template

METADATA_HOSTS = ("metadata", "metadata.google.internal", "metadata.azure.internal")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowed_hosts(text: str) -> list[str]:
    """The setting's entries; raises ValueError naming a malformed one."""
    entries = [part.strip().lower() for part in text.split(",") if part.strip()]
    for entry in entries:
        if "/" in entry:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not a network like 10.0.0.0/8") from None
        elif not all(ch.isalnum() or ch in ".-*:_[]" for ch in entry):
            raise ValueError(f"{entry!r} is not a host name, address or network")
    return entries


class HostPolicy:
    """Decides whether a URL's host may be called by the workers."""

    def __init__(self, allowed: Sequence[str] = ()):
        self.allowed = list(allowed)
        self._networks: list[_Network] = [
            ipaddress.ip_network(entry, strict=False) for entry in self.allowed if "/" in entry
        ]
        self._names = [entry for entry in self.allowed if "/" not in entry]

    @classmethod
    def from_setting(cls, text: str) -> HostPolicy:
        return cls(parse_allowed_hosts(text))

    def problem(self, url: str) -> str | None:
        """Why the workers must not call ``url``, or None."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return f"{url!r} is not an http(s) URL"
        host = (parts.hostname or "").lower()
        if not host:
            return f"{url!r} has no host"
        address = _address(host)
        if host in METADATA_HOSTS or (address is not None and address.is_link_local):
            return f"{host} is a link-local or cloud metadata address: never called"
        if not self.allowed:
            return None
        if address is not None and any(address in network for network in self._networks):
            return None
        if any(fnmatchcase(host, pattern) for pattern in self._names):
            return None
        return f"{host} is not among the allowed hosts ({', '.join(self.allowed)})"


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def plan_urls(plan: Plan, values: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Every URL a rollout of ``plan`` would call, rendered with its ``values``, with
    the field path it comes from."""
    yield from _urls(plan.model_dump(mode="json", exclude={"variables", "overridable"}), "", values)


def _urls(node: Any, path: str, values: dict[str, str]) -> Iterator[tuple[str, str]]:
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
