"""Whether anything hands out due work, and what a rollout waiting on it says.

Every check, gate recheck and rollback retry of a rollout is handed out by the
reconcile task. A deployment with workers for the other queues and beat, but no
worker on the reconcile queue, accepts ``canary start`` and then nothing moves:
beat's messages expire unread and no process logs a word. So reconcile records
each run in the store (``controller.store.heartbeats``), and the readers compare:
a rollout that is due while no reconcile has run for ``stale_after(interval)``
says so, with what to check (``canary status``, ``canary start``, the API's views),
and ``/metrics`` shows the age of the last run for the alert rules.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from controller.store import heartbeats
from controller.store.models import ADVANCING_STATES, ROLLBACK_STATES, Rollout, RolloutState

# Silence longer than this many reconcile intervals means nothing runs reconcile;
# never less than STALE_AT_LEAST, which absorbs a tick that waits behind a slow one,
# a beat restart, and a few seconds between the writer's and the reader's clocks.
STALE_AFTER_INTERVALS = 5
STALE_AT_LEAST = timedelta(seconds=30)
ADVICE = "is a worker consuming the reconcile queue?"


def stale_after(interval: timedelta) -> timedelta:
    """How long reconcile may stay silent before a rollout waiting on it says so."""
    return max(interval * STALE_AFTER_INTERVALS, STALE_AT_LEAST)


def waits_for_reconcile(state: str, weight: int | None) -> bool:
    """Whether a rollout in ``state`` moves only when reconcile hands it out: the
    advancing states, a paused canary with traffic (still measured), and rollbacks
    (retried). A paused rollout without traffic waits for a person instead."""
    if state in ADVANCING_STATES or state in ROLLBACK_STATES:
        return True
    return state == RolloutState.PAUSED and bool(weight)


def stalled_note(
    *,
    state: str,
    weight: int | None,
    created_at: datetime,
    next_check_at: datetime,
    last_run: datetime | None,
    now: datetime,
    interval: timedelta,
) -> str | None:
    """The sentence a rollout shows when it is due and no reconcile has run for a
    while (``last_run`` None: never), e.g. "pending 3 min: no reconcile has run since
    21:17:05 UTC; is a worker consuming the reconcile queue?"; None otherwise."""
    if not waits_for_reconcile(state, weight) or next_check_at > now:
        return None
    if last_run is not None and now - last_run <= stale_after(interval):
        return None
    if state == RolloutState.PENDING:
        waiting = " ".join(filter(None, ["pending", _age(now - created_at)]))
    else:
        overdue = _age(now - next_check_at)
        waiting = f"{state}, its next check due {overdue} ago" if overdue else f"{state}, due"
    if last_run is None:
        silence = "no reconcile has ever run"
    else:
        silence = f"no reconcile has run since {_clock(last_run, now)}"
    return f"{waiting}: {silence}; {ADVICE}"


def rollout_note(
    session: Session, rollout: Rollout, now: datetime, interval: timedelta
) -> str | None:
    """``stalled_note`` for a stored rollout, reading reconcile's last run only when
    the rollout is one that waits on it."""
    if not waits_for_reconcile(rollout.state, rollout.weight) or rollout.next_check_at > now:
        return None
    beat = heartbeats.last_run(session, heartbeats.RECONCILE)
    return stalled_note(
        state=rollout.state,
        weight=rollout.weight,
        created_at=rollout.created_at,
        next_check_at=rollout.next_check_at,
        last_run=beat.at if beat else None,
        now=now,
        interval=interval,
    )


def last_run_age(session: Session, now: datetime) -> float:
    """Seconds since reconcile last ran (+Inf if it never has: an alert comparing the
    age with a limit fires on a store that reconcile never touched, where an absent
    series would stay silent). Never negative: the writer's clock may be ahead."""
    beat = heartbeats.last_run(session, heartbeats.RECONCILE)
    if beat is None:
        return float("inf")
    return max(0.0, (now - beat.at).total_seconds())


def _age(delta: timedelta) -> str:
    """A wait for people: "45s", "3 min", "2 h 5 min"; "" under a second."""
    seconds = int(delta.total_seconds())
    if seconds < 1:
        return ""
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _clock(at: datetime, now: datetime) -> str:
    """When, in UTC like every time the controller records: the time of day, with
    the date when it was not today."""
    at, now = at.astimezone(UTC), now.astimezone(UTC)
    if at.date() == now.date():
        return at.strftime("%H:%M:%S UTC")
    return at.strftime("%Y-%m-%d %H:%M UTC")
