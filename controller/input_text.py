"""Text from outside that the store could not hold.

PostgreSQL refuses a NUL character in text and in JSON, so a value carrying one
would fail at the first write, after the checks, as a database error. Input is
refused at the edge instead, naming the field like any other bad value.
"""

from __future__ import annotations

from typing import Any

NUL_MESSAGE = "contains a NUL character (\\u0000), which no text may hold"


def has_nul(value: Any) -> bool:
    """Whether ``value`` (a string, or a dict or list of them, keys included) has a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(item) for item in value)
    return False


def refuse_nul(value: Any) -> Any:
    """A pydantic validator: the value unchanged, or a ValueError naming the problem."""
    if has_nul(value):
        raise ValueError(NUL_MESSAGE)
    return value
