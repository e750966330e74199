"""Durations as people write them in plans: ``30m``, ``90s``, ``1h30m``, ``500ms``.

A bare number is refused on purpose: "30" could be seconds or minutes, and a rollout
plan is the wrong place to guess.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import timedelta
from itertools import groupby

# Digits 0-9 only: ``\d`` takes every script's digits, and float() reads them too, so
# "١٠m" (Arabic-Indic) was 10 minutes, a value no reviewer reads in it.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
# The whole of a duration as plans write it, for JSON Schema (spaces allowed between parts).
DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)\s*)+$"
MAX_SECONDS = 365 * 86400
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m``-style text; raise ValueError saying what is wrong."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a duration like '30m' or '90s', got {text!r}")
    compact = text.strip().replace(" ", "")
    if not compact:
        raise ValueError("expected a duration like '30m' or '90s', got an empty string")
    foreign = _foreign_digits(compact)
    if foreign:
        read = ", ".join(f"{digits!r} reads as {number}" for digits, number in foreign)
        raise ValueError(
            f"{text!r} has digits other than 0-9 ({read}): write "
            f"{_in_ascii_digits(compact)!r} with the digits 0-9"
        )
    position = 0
    total = 0.0
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == len(compact) and total > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than {MAX_SECONDS // 86400} days")
    if position != len(compact):
        raise ValueError(
            f"{text!r} is not a duration: use a number with a unit (ms, s, m, h, d), "
            "like '30m', '90s' or '1h30m'"
        )
    return timedelta(seconds=total)


def _foreign_digits(text: str) -> list[tuple[str, int]]:
    """Each run of decimal digits in ``text`` that are not all 0-9, with the number it
    stands for: what ``float()`` reads in it."""
    found: list[tuple[str, int]] = []
    for is_digit, chars in groupby(text, key=lambda c: unicodedata.decimal(c, None) is not None):
        run = "".join(chars)
        if is_digit and not run.isascii():
            found.append((run, int("".join(str(unicodedata.decimal(c)) for c in run))))
    return found


def _in_ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(c, c)) for c in text)


def format_duration(value: timedelta) -> str:
    """Render for humans and for PromQL range selectors (``5m``, ``1h30m``, ``45s``,
    ``1s500ms``). Exact to the millisecond, so a plan stored as JSON and loaded again
    at every step is the plan that was reviewed (``1500ms`` stays 1.5 s, not 2 s)."""
    millis = round(value.total_seconds() * 1000)
    whole, ms = divmod(millis, 1000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
        f"{ms}ms" if ms else "",
    ]
    return "".join(parts) or "0s"
