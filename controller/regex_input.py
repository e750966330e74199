"""Regular expressions that come from input (a plan's override patterns, its alert
matchers): compiled so that no pattern can end in anything but a clear error.

``re.compile`` raises ``re.error`` for bad syntax, but a repeat count beyond what the
engine holds (``a{9999999999}``) raises ``OverflowError`` and groups nested a
thousand deep raise ``RecursionError``: both would escape a loader that catches only
``re.error`` as a traceback or a 500.
"""

from __future__ import annotations

import re


class PatternError(ValueError):
    """The pattern cannot be used; the message says why."""


def compile_pattern(pattern: str, wrap: bool = False) -> re.Pattern[str]:
    """Compile ``pattern`` (in a non-capturing group when ``wrap``, so an anchor or an
    alternation applies to all of it); raise PatternError for any pattern ``re``
    cannot hold."""
    try:
        compiled = re.compile(pattern)  # alone first, so an error's position is the pattern's
        return re.compile(f"(?:{pattern})") if wrap else compiled
    except re.error as exc:
        raise PatternError(str(exc)) from None
    except OverflowError:
        raise PatternError("a repeat count is larger than the regex engine can hold") from None
    except RecursionError:
        raise PatternError("nested too deep") from None
