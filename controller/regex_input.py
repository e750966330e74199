"""Regular expressions that come from input (a plan's override patterns, its alert
matchers), compiled with RE2: matching takes time linear in the text, whatever the
pattern, and no pattern can end in anything but a clear error.

Python's ``re`` backtracks: ``(a+)+$`` against forty ``a`` and a ``!`` runs for
minutes, and the texts matched here come from outside (a start's variable values,
an alert's labels), so one pattern an admin got wrong would let any operator, or
any label, hold an API process. RE2 is also the syntax Alertmanager itself matches
with (Go's regexp), so a matcher copied from an Alertmanager route means the same
here. What RE2 leaves out (backreferences, lookaround) is refused with its reason.

Plans already in the store (a running rollout's) were accepted when patterns were
Python's ``re``: one of their patterns RE2 refuses is compiled as ``re`` took it
then (``stored=True``), so an upgrade never leaves a rollout whose plan no longer
loads, which would leave its rollback unable to build its router.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Protocol

import re2


class PatternError(ValueError):
    """The pattern cannot be used; the message says why."""


class Match(Protocol):
    def group(self, index: int = 0) -> str: ...


class Pattern(Protocol):
    """What callers use of a compiled pattern (``re``'s names; RE2's or, for a stored
    plan's pattern RE2 refuses, ``re``'s)."""

    pattern: str

    def fullmatch(self, text: str) -> Match | None: ...


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 writes errors to stderr itself; ours say them
    return options


_OPTIONS = _options()


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str, wrap: bool = False, stored: bool = False) -> Pattern:
    """Compile ``pattern`` (in a non-capturing group when ``wrap``, so an anchor or an
    alternation applies to all of it); raise PatternError for any pattern RE2 cannot
    hold (bad syntax, a construct it leaves out, a program beyond its memory), unless
    ``stored`` and Python's ``re`` takes it (see the module's docstring)."""
    try:
        compiled = re2.compile(pattern, _OPTIONS)  # alone first: the error is the pattern's
        return re2.compile(f"(?:{pattern})", _OPTIONS) if wrap else compiled
    except re2.error as exc:
        legacy = _as_re_took_it(pattern, wrap) if stored else None
        if legacy is None:
            raise PatternError(_reason(exc)) from None
        return legacy
    except UnicodeError:
        raise PatternError("it holds text that is not valid Unicode (a lone surrogate)") from None


def matches_whole(pattern: Pattern, text: str) -> bool:
    """Whether ``pattern`` matches all of ``text``. Text RE2 cannot encode (a lone
    surrogate, which JSON can carry) is matched with that character replaced, never
    an exception in the middle of an alert's or a start's handling."""
    try:
        return pattern.fullmatch(text) is not None
    except UnicodeError:
        cleaned = text.encode("utf-8", "replace").decode("utf-8")
        return pattern.fullmatch(cleaned) is not None


def _as_re_took_it(pattern: str, wrap: bool) -> Pattern | None:
    try:
        return re.compile(f"(?:{pattern})" if wrap else pattern)
    except (re.error, OverflowError, RecursionError):
        return None


def _reason(exc: re2.error) -> str:
    reason = exc.args[0] if exc.args else "not a pattern RE2 can compile"
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
