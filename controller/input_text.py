"""Text from outside that the store could not hold.

PostgreSQL refuses a NUL character in text and in JSON, so a value carrying one
would fail at the first write, after the checks, as a database error. Input is
refused at the edge instead, naming the field like any other bad value.

Names of people are text from outside too: an API token's name is who acts, and a
plan's owners must be names a token can have (``person_name_problem``).
"""

from __future__ import annotations

import unicodedata
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


# What separates the entries and fields of CANARY_API_TOKENS (name:role:token,...).
_TOKEN_SEPARATORS = ",:"
MAX_PERSON_NAME = 128


def person_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a person who acts (an API token's name, a plan's owner),
    or None. An approval is recorded as the approver's token name and matched with
    the plan's owners exactly, so an owner written as a token could never carry it
    (``"alice\\n"``, ``"   "``) is an approval nobody can ever give."""
    if not name or not name.strip():
        return "it is empty or only whitespace"
    if len(name) > MAX_PERSON_NAME:
        return f"it is longer than {MAX_PERSON_NAME} characters"
    if name != name.strip():
        return "it starts or ends with whitespace"
    hidden = next((c for c in name if unicodedata.category(c).startswith("C")), None)
    if hidden is not None:
        return f"it holds the control or invisible character {hidden!r}"
    separator = next((c for c in name if c in _TOKEN_SEPARATORS), None)
    if separator is not None:
        return f"it holds {separator!r}, which CANARY_API_TOKENS uses to separate entries"
    return None
