"""Parsing of host-list settings, kept beside the settings that use it: the settings
parse their own fields and import nothing of the controller's domain."""

from __future__ import annotations

import ipaddress


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
