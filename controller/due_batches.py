"""Rollouts due at the same moment, checked together by one task.

At a thousand rollouts on a 10 s interval a hundred checks fall due every second. As
a task each, the broker, the worker's consumer and its pool spend more on handing a
check out (a message, an eta timer, a pipe to a pool process, four task events)
than a hold costs the check itself. So reconcile groups the rollouts due within
``SPREAD`` of one another into batches of at most the configured size, and one task
checks a batch one rollout after the other, each exactly as ``engine.advance`` does
alone: its own lease, its own transaction, its own verdict. Nothing is shared
between them but the task.

A batch never makes a rollout late by much: each check starts at its due time (the
task waits for the batch's later ones, never longer than ``SPREAD``), and once the
batch has run for ``HAND_OFF_AFTER`` the rollouts not yet checked are handed to a
task of their own, so one slow check (a router or a slot that answers at its
timeout) delays the rest of its batch by at most that much. Every check therefore
also starts with nearly the whole task's time limit ahead of it, which is what the
step budget of one advance (``controller.budget``) counts on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol, TypeVar

import structlog

from controller import timeouts
from controller.background import CHECK_THREADS, alongside
from controller.engine import AdvanceResult, advance
from controller.runtime import Runtime
from controller.store.repository import EARLY_START_TOLERANCE

log = structlog.get_logger(__name__)

# Rollouts due within this of the batch's first are checked by the same task; it is
# also the longest a batch waits for its last rollout to fall due.
SPREAD = EARLY_START_TOLERANCE
HAND_OFF_AFTER = timedelta(seconds=1)
# Checks of one batch run side by side: the task's own thread and the helpers.
AT_ONCE = CHECK_THREADS + 1


class DueCheck(NamedTuple):
    """One rollout of a batch: which, and when its check is due."""

    rollout_id: str
    due: datetime


class Due(Protocol):
    """Anything naming a rollout and when it is due (``DueCheck``, reconcile's
    ``DueAdvance``)."""

    @property
    def rollout_id(self) -> str: ...

    @property
    def due(self) -> datetime: ...


D = TypeVar("D", bound=Due)


def group_due(due: Sequence[D], size: int, spread: timedelta = SPREAD) -> list[list[D]]:
    """Batches of at most ``size`` rollouts, in due order, each spanning at most
    ``spread`` from its first due time to its last."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, not {size}")
    batches: list[list[D]] = []
    for check in sorted(due, key=lambda c: c.due):
        current = batches[-1] if batches else None
        if current is None or len(current) >= size or check.due - current[0].due > spread:
            batches.append([check])
        else:
            current.append(check)
    return batches


def advance_due(
    runtime: Runtime,
    batch: Sequence[Due],
    hand_off: Callable[[list[Due]], None],
    advance_one: Callable[[Runtime, str], AdvanceResult] = advance,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    at_once: int = AT_ONCE,
) -> list[AdvanceResult]:
    """Check each rollout of ``batch`` at its due time, ``at_once`` of them side by
    side (a check mostly waits: on the database, Redis, the router, the slots), in
    due order; hand what is left to ``hand_off`` once the batch has run for
    ``HAND_OFF_AFTER``. The results, in due order.

    The caller's thread runs checks too, so the task's time limit strikes in one of
    them and is handled there as in a single advance; the unchecked rest is then
    handed off and the limit raised on. A check that fails with an error is logged
    and reported as nothing done: its own lease and transaction keep the rollout
    consistent, reconcile hands it out again, and the other checks still run.
    """
    checks = _Checks(sorted(batch, key=lambda c: c.due), monotonic)

    def run_checks() -> None:
        while (taken := checks.take()) is not None:
            index, check = taken
            try:
                early = (check.due - runtime.clock()).total_seconds()
                if early > 0:
                    sleep(min(early, SPREAD.total_seconds()))
                result = advance_one(runtime, check.rollout_id)
            except timeouts.out_of_time():
                # The task's time limit struck outside a check's own handling: the
                # rest must not wait for their dispatch mark to expire.
                _hand_off(hand_off, checks.stop(), checked=index)
                raise
            except Exception as exc:
                log.exception("advance_failed", rollout_id=check.rollout_id, error=str(exc))
                result = AdvanceResult(
                    check.rollout_id, acted=False, summary=f"check failed: {exc}"
                )
            checks.done(index, result)

    helpers = [alongside(run_checks) for _ in range(min(at_once, len(checks)) - 1)]
    try:
        run_checks()
    finally:
        for helper in helpers:
            helper.result()
    _hand_off(hand_off, checks.left_over, checked=len(checks.results))
    return [checks.results[index] for index in sorted(checks.results)]


class _Checks:
    """The checks of a batch, taken one at a time by the threads that run them, in
    due order, until none is left or the batch has run for ``HAND_OFF_AFTER``."""

    def __init__(self, ordered: list[Due], monotonic: Callable[[], float]) -> None:
        self._ordered = ordered
        self._monotonic = monotonic
        self._started = monotonic()
        self._next = 0
        self._guard = threading.Lock()
        self.results: dict[int, AdvanceResult] = {}
        self.left_over: list[Due] = []

    def __len__(self) -> int:
        return len(self._ordered)

    def take(self) -> tuple[int, Due] | None:
        with self._guard:
            if self._next >= len(self._ordered):
                return None
            if self._next and self._monotonic() - self._started > HAND_OFF_AFTER.total_seconds():
                self.left_over = self._ordered[self._next :]
                self._next = len(self._ordered)
                return None
            index = self._next
            self._next += 1
            return index, self._ordered[index]

    def stop(self) -> list[Due]:
        """No more checks: the ones not taken yet."""
        with self._guard:
            left = self._ordered[self._next :]
            self._next = len(self._ordered)
            return left

    def done(self, index: int, result: AdvanceResult) -> None:
        with self._guard:
            self.results[index] = result


def _hand_off(hand_off: Callable[[list[Due]], None], left: list[Due], checked: int) -> None:
    if not left:
        return
    log.info("batch_handed_off", checked=checked, handed_off=len(left))
    try:
        hand_off(left)
    except Exception as exc:  # their dispatch mark expires: reconcile queues them again
        log.error("batch_hand_off_failed", error=str(exc), rollouts=len(left))
