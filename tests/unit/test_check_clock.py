"""Each rollout's checks on the plan's clock, at a phase of its own within the interval."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from config.settings import Settings
from controller.check_clock import check_phase, next_tick
from controller.engine import advance
from controller.plan import Plan
from tests.unit.test_state_machine import make_plan, start, state

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
EVERY = timedelta(seconds=10)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def phase_of(moment: datetime, interval: timedelta = EVERY) -> float:
    """Where ``moment`` falls in the interval, as a fraction (the grid's phase)."""
    return ((moment - EPOCH) % interval) / interval


def test_a_steps_first_check_waits_one_to_two_intervals_and_lands_on_the_rollouts_phase() -> None:
    for rollout_id in ("a", "b", "rollout-0042", "5d1f0c3e-1b7e-4a43-9a3c-0d1e2f3a4b5c"):
        phase = check_phase(rollout_id)
        first = next_tick(T0, T0, EVERY, phase)
        assert EVERY <= first - T0 < 2 * EVERY
        assert abs(phase_of(first) - phase) < 1e-6


def test_a_due_time_on_the_grid_keeps_the_plans_clock() -> None:
    phase = check_phase("rollout-1")
    due = next_tick(T0, T0, EVERY, phase)
    late = due + timedelta(seconds=2)  # the check started 2 s late
    assert next_tick(due, late, EVERY, phase) == due + EVERY
    early = due - timedelta(milliseconds=300)  # a host whose clock is a little behind
    assert next_tick(due, early, EVERY, phase) == due + EVERY


def test_missed_ticks_are_skipped_not_caught_up() -> None:
    phase = check_phase("rollout-1")
    due = next_tick(T0, T0, EVERY, phase)
    assert next_tick(due, due + EVERY, EVERY, phase) == due + 2 * EVERY  # never "now" again
    assert next_tick(due, due + timedelta(seconds=35), EVERY, phase) == due + 4 * EVERY


def test_a_tick_less_than_half_an_interval_ahead_of_a_late_check_is_skipped() -> None:
    """Behind, the workers shed checks: the check at that tick would find no shared
    answer it has not judged, and would ask Prometheus for this rollout's own."""
    for phase in (None, check_phase("rollout-1")):
        due = next_tick(T0, T0, EVERY, phase)
        on_time = next_tick(due, due + timedelta(seconds=5), EVERY, phase)
        assert on_time == due + EVERY  # 5 s late: the next tick is still 5 s ahead
        late = next_tick(due, due + timedelta(seconds=7), EVERY, phase)
        assert late == due + 2 * EVERY  # 7 s late: the next tick, 3 s ahead, skipped
        later = next_tick(due, due + timedelta(seconds=18), EVERY, phase)
        assert later == due + 3 * EVERY


def test_without_a_phase_the_grid_starts_where_the_step_began() -> None:
    assert next_tick(T0, T0 + timedelta(seconds=2), EVERY) == T0 + EVERY
    assert next_tick(None, T0, EVERY) == T0 + EVERY
    assert next_tick(None, T0, EVERY, 0.5) - T0 >= EVERY


def test_rollouts_started_in_the_same_second_fall_due_spread_over_the_interval() -> None:
    started = [T0 + timedelta(milliseconds=3 * n) for n in range(1000)]  # all within 3 s
    dues = [next_tick(at, at, EVERY, check_phase(f"rollout-{n}")) for n, at in enumerate(started)]
    per_second = Counter(int(phase_of(due) * 10) for due in dues)
    assert sorted(per_second) == list(range(10))
    assert max(per_second.values()) < 140 and min(per_second.values()) > 60  # about 100 each
    unspread = Counter(int(phase_of(next_tick(at, at, EVERY)) * 10) for at in started)
    assert len(unspread) <= 4  # the step's own clock: all in the seconds they started


def test_the_engine_spreads_checks_when_asked_and_keeps_the_interval_after(world) -> None:
    runtime, _, _, clock, _ = world
    runtime.spread_checks = True
    data = make_plan().model_dump(mode="json")
    data["stages"][0]["hold"] = "10m"  # checks on the grid, not at the hold's end
    rollout_id = start(runtime, Plan.from_data(data))
    advance(runtime, rollout_id)  # the canary weight is set; its hold begins
    rollout, _ = state(runtime, rollout_id)
    interval = timedelta(seconds=5)  # the test plan's
    assert interval <= rollout.next_check_at - clock() < 2 * interval
    assert abs(phase_of(rollout.next_check_at, interval) - check_phase(rollout_id)) < 1e-6
    due = rollout.next_check_at
    for _ in range(3):
        clock.now = due + timedelta(seconds=1)
        advance(runtime, rollout_id)
        rollout, events = state(runtime, rollout_id)
        assert events[-1].kind == "measurement" and events[-1].at == clock.now
        assert rollout.next_check_at == due + interval
        due = rollout.next_check_at


def test_the_workers_spread_checks_by_default() -> None:
    assert Settings().spread_checks is True
    assert Settings(spread_checks=False).spread_checks is False
