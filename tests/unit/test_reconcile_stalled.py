"""A rollout waiting on a reconcile that nobody runs says so (issue 28, case 12).

The sentence itself, when it is said and when not, and the readers that show it:
``canary status``'s detail, ``/metrics``. The real stack (workers without one on the
reconcile queue) is in tests/integration/test_no_reconcile_worker.py.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console

from controller.reconcile.stalled import stale_after, stalled_note
from controller.render import detail_view
from controller.runtime import utcnow
from controller.store import heartbeats, repository
from controller.telemetry import StoreCollector
from controller.views import rollout_detail
from tests.unit.test_state_machine import make_plan, start

NOW = datetime(2026, 12, 7, 21, 20, 10, tzinfo=UTC)
INTERVAL = timedelta(seconds=2)
ADVICE = "is a worker consuming the reconcile queue?"


def note(
    state: str = "pending",
    *,
    weight: int | None = None,
    waiting: timedelta = timedelta(minutes=3),
    overdue: timedelta = timedelta(0),
    silent: timedelta | None = timedelta(minutes=3, seconds=5),
    interval: timedelta = INTERVAL,
) -> str | None:
    """The note of a rollout created ``waiting`` ago, due ``overdue`` ago, with the
    last reconcile ``silent`` ago (None: never)."""
    return stalled_note(
        state=state,
        weight=weight,
        created_at=NOW - waiting,
        next_check_at=NOW - overdue,
        last_run=None if silent is None else NOW - silent,
        now=NOW,
        interval=interval,
    )


def test_a_pending_rollout_says_since_when_nothing_hands_out_work() -> None:
    assert note() == ("pending 3 min: no reconcile has run since 21:17:05 UTC; " + ADVICE)
    assert note(silent=None) == "pending 3 min: no reconcile has ever run; " + ADVICE
    assert note(waiting=timedelta(0), silent=None) == (
        "pending: no reconcile has ever run; " + ADVICE  # just started
    )
    yesterday = note(silent=timedelta(days=1, hours=2))
    assert yesterday is not None and "since 2026-12-06 19:20 UTC;" in yesterday


def test_a_rollout_past_its_check_says_how_long_it_is_overdue() -> None:
    assert note("running", weight=10, overdue=timedelta(seconds=95)) == (
        "running, its next check due 1 min ago: no reconcile has run since 21:17:05 UTC; " + ADVICE
    )
    blocked = note("blocked", overdue=timedelta(hours=2, minutes=5), silent=None)
    assert blocked == "blocked, its next check due 2 h 5 min ago: no reconcile has ever run; " + (
        ADVICE
    )


@pytest.mark.parametrize(
    ("interval", "quiet", "loud"),
    [
        (timedelta(seconds=2), timedelta(seconds=30), timedelta(seconds=31)),  # the floor
        (timedelta(seconds=20), timedelta(seconds=100), timedelta(seconds=101)),  # 5 intervals
    ],
)
def test_said_only_after_several_reconcile_intervals_of_silence(
    interval: timedelta, quiet: timedelta, loud: timedelta
) -> None:
    assert stale_after(interval) == quiet
    assert note(silent=quiet, interval=interval) is None
    assert note(silent=loud, interval=interval) is not None


@pytest.mark.parametrize(
    ("state", "weight", "overdue", "said"),
    [
        ("pending", None, timedelta(0), True),
        ("running", 10, timedelta(seconds=1), True),
        ("running", 10, -timedelta(seconds=1), False),  # not due yet: nothing is late
        ("paused", 10, timedelta(seconds=1), True),  # still measured
        ("paused", 0, timedelta(seconds=1), False),  # waits for a person, not reconcile
        ("rolling_back", 10, timedelta(seconds=1), True),  # retried by reconcile
        ("rollback_failed", 10, timedelta(seconds=1), True),
        ("succeeded", 100, timedelta(seconds=1), False),
        ("aborted", 0, timedelta(seconds=1), False),
    ],
)
def test_said_only_by_a_due_rollout_that_waits_on_reconcile(
    state: str, weight: int, overdue: timedelta, said: bool
) -> None:
    assert (note(state, weight=weight, overdue=overdue) is not None) is said


def test_the_status_detail_says_it_and_stops_once_reconcile_runs(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())

    def detail() -> dict:
        with runtime.sessions() as session:
            rollout = repository.get_rollout(session, rollout_id)
            return rollout_detail(session, rollout, now=clock.now, reconcile_interval=INTERVAL)

    assert detail()["stalled"] == "pending: no reconcile has ever run; " + ADVICE
    shown = Console(width=200, record=True)
    shown.print(detail_view(detail()))
    assert "warning: pending: no reconcile has ever run;" in shown.export_text()

    with runtime.sessions() as session:
        heartbeats.record(session, heartbeats.RECONCILE, clock.now, "worker-1")
        session.commit()
    assert detail()["stalled"] is None
    clock.now += timedelta(minutes=4)
    assert detail()["stalled"] == (
        "pending 4 min: no reconcile has run since 00:00:00 UTC; " + ADVICE
    )
    with runtime.sessions() as session:  # a reader that does not know the interval
        rollout = repository.get_rollout(session, rollout_id)
        assert rollout_detail(session, rollout, now=clock.now)["stalled"] is None


def age_on_metrics(runtime) -> float:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    registry.register(StoreCollector(runtime.sessions))
    value = registry.get_sample_value("canary_reconcile_last_run_age_seconds")
    assert value is not None
    return value


def test_metrics_show_the_age_of_the_last_reconcile_and_inf_before_any(world) -> None:
    runtime = world[0]
    assert math.isinf(age_on_metrics(runtime))
    with runtime.sessions() as session:
        ran_at = utcnow() - timedelta(minutes=10)
        heartbeats.record(session, heartbeats.RECONCILE, ran_at, "worker-1")
        session.commit()
    assert 600 <= age_on_metrics(runtime) < math.inf
    with runtime.sessions() as session:  # an older tick committing late moves nothing back
        heartbeats.record(session, heartbeats.RECONCILE, ran_at - timedelta(hours=1), "late")
        session.commit()
        assert heartbeats.last_run(session).by == "worker-1"
