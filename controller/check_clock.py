"""When a rollout's next check is due: on the plan's clock, at the rollout's own phase.

A rollout is checked every ``interval`` on a grid: its next check is the previous
due time plus the interval, never this check's start plus it (a check that starts
late must not push every later one back). Where the grid starts is the question
this module answers.

Started from the moment a step began, the grids of rollouts started together (a
fleet-wide release, a script starting a hundred services) coincide: every one of
them falls due in the same second of every interval, and the workers get all of a
round's checks at once and none in between. Three hundred checks due within two
seconds wait up to two seconds for a free worker, on a machine idle most of the
interval. So each rollout's grid sits at a phase of its own within the interval
(a hash of its id, as Prometheus spreads its scrapes over the scrape interval):
rollouts started together are checked spread over the interval, and the load is
the same in every second.

The phase costs a check nothing but the first of a step: that one waits between
one and two intervals instead of exactly one, once, and every check after it is
exactly one interval after the one before.

A check that starts more than half an interval late skips the tick just ahead of
it: the check there would come too soon to have new data (shared answers are
evaluated once per half interval, ``controller.analysis.batching``), and asking for
each rollout's own instead would load Prometheus most when the workers are behind
already. Behind, the workers shed checks until they are on time again rather than
run the ones they missed in a burst.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def check_phase(rollout_id: str) -> float:
    """Where in the interval the rollout's checks fall, as a fraction in [0, 1):
    fixed for the rollout (every worker computes the same), uniform over rollouts."""
    digest = hashlib.blake2b(rollout_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def next_tick(
    due: datetime | None, now: datetime, interval: timedelta, phase: float | None = None
) -> datetime:
    """The next check after one due at ``due`` that started at ``now``.

    Without a ``phase``: the first time after ``now`` on the grid ``due + k *
    interval`` (k >= 1); with no due time, ``now + interval``. With one: the first
    time, at least one interval after ``due`` (or ``now``) and after ``now``, on
    the grid ``phase * interval + k * interval`` from the epoch; a due time already
    on that grid keeps it, so only a step's first check moves (by less than an
    interval). Missed ticks are skipped, never caught up in a burst, and so is a
    tick less than half an interval ahead of a late check. (``due`` may be a moment
    after ``now`` when a check queued for its due time starts on a host whose clock
    is a little behind.)"""
    if interval <= timedelta(0):
        return now + interval
    tick = _on_grid(due, now, interval, phase)
    if tick - now < interval / 2:
        tick += interval
    return tick


def _on_grid(
    due: datetime | None, now: datetime, interval: timedelta, phase: float | None
) -> datetime:
    """The first grid point after ``now`` and at least one interval after ``due``."""
    if phase is None:
        if due is None:
            return now + interval
        return due + max(1, (now - due) // interval + 1) * interval
    earliest = (due if due is not None else now) + interval
    if earliest <= now:
        earliest = now + _MICROSECOND  # a late check: the first tick still ahead
    step = interval // _MICROSECOND
    offset = int(phase * step) % step
    since_epoch = (earliest - _EPOCH) // _MICROSECOND
    ticks = -((offset - since_epoch) // step)  # the first grid point at or after it
    return _EPOCH + (offset + ticks * step) * _MICROSECOND
