"""When a task runs out of time: the exceptions that say so, and what was running.

A step's checks catch broad exceptions on purpose: an unusable URL or a crashing
command is a failed check, never a crashed worker. The task runner says "out of
time" with an exception too (Celery's ``SoftTimeLimitExceeded``); caught the same
way, it would turn a healthy release into a failed smoke check and roll it back.
The domain must not import Celery, so the worker registers those types here when
it starts, every broad ``except`` in a check re-raises them, and the engine
records the advance as an error that decides nothing.

Plans are also refused at load time when the checks of one advance could add up
past ``STEP_BUDGET_SECONDS`` (``controller.budget``), and the settings refuse a
task time limit whose soft limit would not leave room for that budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar

# The most the checks of one advance may take, by their configured timeouts. A task's
# soft time limit must be above it (config.settings): the difference is for the
# router, the database and Python itself.
STEP_BUDGET_SECONDS = 30.0

_registered: tuple[type[BaseException], ...] = ()
_running: ContextVar[str | None] = ContextVar("running", default=None)
_NOTE = "canary_running"  # attribute set on the exception: what it interrupted


def register(*types: type[BaseException]) -> None:
    """Declare exception types that mean "this task ran out of time" (idempotent)."""
    global _registered
    _registered = (*_registered, *(t for t in types if t not in _registered))


def out_of_time() -> tuple[type[BaseException], ...]:
    """The registered types, for ``except out_of_time():`` (empty: matches nothing)."""
    return _registered


def is_out_of_time(exc: BaseException) -> bool:
    return isinstance(exc, _registered)


@contextmanager
def running(what: str) -> Iterator[None]:
    """Name the work inside the block, so that an advance that runs out of time can
    say what it was doing (the innermost name wins)."""
    token = _running.set(what)
    try:
        yield
    except BaseException as exc:
        if is_out_of_time(exc) and getattr(exc, _NOTE, None) is None:
            with suppress(AttributeError):  # a type with __slots__: nothing noted
                setattr(exc, _NOTE, what)
        raise
    finally:
        _running.reset(token)


def what_was_running(exc: BaseException) -> str | None:
    """What the time limit interrupted, when a ``running`` block named it."""
    return getattr(exc, _NOTE, None)
