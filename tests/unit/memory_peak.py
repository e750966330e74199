"""How much memory one call takes at its peak, for tests that bound it.

Two measures, because the PromQL parser is Rust: its allocations never pass through
Python's allocator, so ``tracemalloc`` sees the YAML tree and the models but not the
parse. The native measure is the growth of the process's resident set at its peak:
Linux lets a process reset its high-water mark (``/proc/self/clear_refs``, "5"),
after glibc has handed freed memory back (``malloc_trim``), so each call is
measured on its own. Where either is missing the native measure is None and only
Python's is known.
"""

from __future__ import annotations

import ctypes
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
MB = 1 << 20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Peak:
    """Bytes above what was in use before the call, at the call's peak."""

    python: int
    native: int | None


def peak_of(call: Callable[[], T]) -> tuple[T, Peak]:
    """Run ``call`` and measure its peak (see the module)."""
    native_known = _release_free_memory() and _reset_high_water_mark()
    resident_before = _status_bytes("VmRSS") if native_known else 0
    tracemalloc.start()
    try:
        result = call()
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    native = _status_bytes("VmHWM") - resident_before if native_known else None
    return result, Peak(python_peak, native)


def _release_free_memory() -> bool:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)
