"""Rollouts due together, checked by one task: how they are grouped, that each is
checked at its due time, that a long batch hands its rest on, and that one failing
check does not cost the others theirs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from controller import timeouts
from controller.due_batches import AT_ONCE, HAND_OFF_AFTER, SPREAD, DueCheck, advance_due, group_due
from controller.engine import AdvanceResult
from controller.runtime import Runtime

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def due(name: str, seconds: float) -> DueCheck:
    return DueCheck(name, T0 + timedelta(seconds=seconds))


def test_grouped_in_due_order_within_the_spread_and_the_size() -> None:
    checks = [due("c", 0.4), due("a", 0.0), due("d", 0.6), due("b", 0.2), due("e", 0.7)]
    batches = group_due(checks, size=2)
    assert [[c.rollout_id for c in batch] for batch in batches] == [["a", "b"], ["c", "d"], ["e"]]
    # By time alone: everything within SPREAD of a batch's first check goes with it.
    by_time = group_due(checks, size=100)
    assert [[c.rollout_id for c in batch] for batch in by_time] == [["a", "b", "c"], ["d", "e"]]
    for batch in by_time:
        assert batch[-1].due - batch[0].due <= SPREAD


def test_size_one_is_a_task_per_check_and_nothing_is_refused_silently() -> None:
    checks = [due(str(n), 0.0) for n in range(3)]
    assert [len(batch) for batch in group_due(checks, size=1)] == [1, 1, 1]
    assert group_due([], size=5) == []
    with pytest.raises(ValueError, match="at least 1"):
        group_due(checks, size=0)


class Clock:
    """A wall clock and a monotonic one that move only when told (or slept)."""

    def __init__(self) -> None:
        self.now = T0
        self.elapsed = 0.0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.elapsed += seconds

    def monotonic(self) -> float:
        return self.elapsed


def runtime_at(clock: Clock) -> Runtime:
    return Runtime(sessions=None, metrics=None, router_for=None, clock=lambda: clock.now)  # type: ignore[arg-type]


def test_each_check_starts_at_its_due_time_never_before() -> None:
    clock = Clock()
    started: dict[str, datetime] = {}

    def check(_rt: Runtime, rollout_id: str) -> AdvanceResult:
        started[rollout_id] = clock.now
        clock.advance(0.01)
        return AdvanceResult(rollout_id, acted=True)

    batch = [due("late", 0.3), due("first", 0.0), due("second", 0.1)]
    results = advance_due(
        runtime_at(clock),
        batch,
        hand_off=lambda left: pytest.fail(f"handed off {left}"),
        advance_one=check,
        sleep=clock.advance,
        monotonic=clock.monotonic,
        at_once=1,
    )
    assert [r.rollout_id for r in results] == ["first", "second", "late"]
    for check_due in batch:
        assert started[check_due.rollout_id] >= check_due.due
        assert started[check_due.rollout_id] - check_due.due < timedelta(seconds=0.02)


def test_a_batch_past_its_time_hands_the_rest_to_a_task_of_their_own() -> None:
    clock = Clock()
    handed: list[list[str]] = []

    def slow(_rt: Runtime, rollout_id: str) -> AdvanceResult:
        # The second check answers at its timeouts: the batch runs past HAND_OFF_AFTER.
        clock.advance(HAND_OFF_AFTER.total_seconds() + 1 if rollout_id == "b" else 0.01)
        return AdvanceResult(rollout_id, acted=True)

    batch = [due(name, 0.0) for name in "abcd"]
    results = advance_due(
        runtime_at(clock),
        batch,
        hand_off=lambda left: handed.append([c.rollout_id for c in left]),
        advance_one=slow,
        sleep=clock.advance,
        monotonic=clock.monotonic,
        at_once=1,
    )
    assert [r.rollout_id for r in results] == ["a", "b"]
    assert handed == [["c", "d"]]


def test_a_failing_check_is_reported_and_the_others_still_run() -> None:
    clock = Clock()

    def flaky(_rt: Runtime, rollout_id: str) -> AdvanceResult:
        if rollout_id == "b":
            raise RuntimeError("database went away")
        return AdvanceResult(rollout_id, acted=True)

    results = advance_due(
        runtime_at(clock),
        [due(name, 0.0) for name in "abc"],
        hand_off=lambda left: pytest.fail("nothing to hand off"),
        advance_one=flaky,
        sleep=clock.advance,
        monotonic=clock.monotonic,
        at_once=1,
    )
    assert [(r.rollout_id, r.acted) for r in results] == [("a", True), ("b", False), ("c", True)]
    assert "database went away" in results[1].sentence()


class OutOfTime(Exception):
    """Stands for the task runner's soft time limit."""


def test_out_of_time_hands_the_unchecked_on_and_still_says_so() -> None:
    timeouts.register(OutOfTime)
    clock = Clock()
    handed: list[list[str]] = []

    def strikes(_rt: Runtime, rollout_id: str) -> AdvanceResult:
        if rollout_id == "b":
            raise OutOfTime()
        return AdvanceResult(rollout_id, acted=True)

    with pytest.raises(OutOfTime):
        advance_due(
            runtime_at(clock),
            [due(name, 0.0) for name in "abcd"],
            hand_off=lambda left: handed.append([c.rollout_id for c in left]),
            advance_one=strikes,
            sleep=clock.advance,
            monotonic=clock.monotonic,
            at_once=1,
        )
    assert handed == [["c", "d"]]


def test_a_hand_off_that_fails_is_logged_not_raised() -> None:
    clock = Clock()

    def slow(_rt: Runtime, rollout_id: str) -> AdvanceResult:
        clock.advance(HAND_OFF_AFTER.total_seconds() + 0.5)
        return AdvanceResult(rollout_id, acted=True)

    def broker_down(_left: list) -> None:
        raise ConnectionError("broker unreachable")

    results = advance_due(
        runtime_at(clock),
        [due(name, 0.0) for name in "ab"],
        hand_off=broker_down,
        advance_one=slow,
        sleep=clock.advance,
        monotonic=clock.monotonic,
        at_once=1,
    )
    assert [r.rollout_id for r in results] == ["a"]


def test_checks_of_a_batch_run_side_by_side_and_results_keep_due_order() -> None:
    """A check mostly waits (database, Redis, router, slots): the batch's checks wait
    together. Run one after another, the barrier below would never fill."""
    together = threading.Barrier(AT_ONCE, timeout=5)
    threads: set[str] = set()

    def waits(_rt: Runtime, rollout_id: str) -> AdvanceResult:
        threads.add(threading.current_thread().name)
        together.wait()
        return AdvanceResult(rollout_id, acted=True)

    clock = Clock()
    batch = [due(name, index * 0.001) for index, name in enumerate("abcdefgh")]
    results = advance_due(
        runtime_at(clock),
        batch,
        hand_off=lambda left: pytest.fail(f"handed off {left}"),
        advance_one=waits,
        sleep=lambda seconds: None,
    )
    assert [r.rollout_id for r in results] == list("abcdefgh")
    assert len(threads) == AT_ONCE > 1
