"""Slots, drift and watching, with a fake clock, fake metrics and a fake router.

The store is a real SQLite file. What is checked is the logic: which slot is stable
after a success, when a rollout may start, that a paused canary with traffic is still
measured, that the router's weight is read at every step and what a drift does.
"""

from __future__ import annotations

from datetime import timedelta
from textwrap import dedent

import pytest

from controller import engine, slots
from controller.engine import advance
from controller.operations import OperationError, pause_rollout, resume_rollout
from controller.plan import Plan
from controller.plan_loader import PlanError, parse_plan
from controller.runtime import Runtime
from controller.store import repository
from tests.unit.test_state_machine import (
    Clock,
    make_plan,
    notified,
    run_until_settled,
    start,
    state,
    with_notifications,
)


def with_traffic(extra: str, analysis: str = "") -> Plan:
    """The unit plan with more ``traffic:`` settings (and analysis settings)."""
    text = dedent(
        """
        name: unit
        analysis: {interval: 5s, window: 30s, inconclusive_limit: 3, error_limit: 2%s}
        traffic:
          stable_server: blue
          canary_server: green
        %s
        stages:
          - {name: canary, kind: canary, weight: 10, hold: 20s}
          - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 10s}]}
        stop_criteria:
          - name: errors
            judge: ratio_threshold
            max_ratio: 0.05
            min_requests: 10
            errors: errors{v="{{ canary_version }}"}
            total: total{v="{{ canary_version }}"}
        """
    ) % (analysis, "  " + extra.replace("\n", "\n  "))
    return parse_plan(text)


def seen_slots(runtime: Runtime, rollout_id: str) -> tuple[str, str]:
    rollout, _ = state(runtime, rollout_id)
    return rollout.stable_slot, rollout.canary_slot


def test_swap_mode_makes_the_slot_that_carries_everything_the_stable_one(world) -> None:
    runtime, _, router, clock, _ = world
    plan = with_traffic("mode: swap")
    first = start(runtime, plan)
    assert seen_slots(runtime, first) == ("blue", "green")
    run_until_settled(runtime, clock, first)
    rollout, events = state(runtime, first)
    assert rollout.state == "succeeded"
    stable = [e for e in events if e.kind == "release_stable"][-1]
    assert stable.data["stable_slot"] == "green"
    with runtime.sessions() as session:
        assert repository.stable_release(session, "api").stable_slot == "green"

    # The router now gives green (the new stable) everything; to the next rollout,
    # whose canary slot is blue, that reads as canary weight 0.
    router.weight = 0
    second = start(runtime, plan, "3.0", stable=None)
    assert seen_slots(runtime, second) == ("green", "blue")
    rollout, _ = state(runtime, second)
    assert rollout.stable_version == "2.0"
    run_until_settled(runtime, clock, second)
    with runtime.sessions() as session:
        assert repository.stable_release(session, "api").stable_slot == "blue"


def test_a_rollout_starts_only_from_the_router_state_the_store_expects(world) -> None:
    runtime, _, router, _, _ = world
    plan = make_plan()
    router.weight = 30  # someone left traffic on the canary slot
    with pytest.raises(OperationError, match="^router: the router gives 30% to canary"):
        start(runtime, plan)
    with runtime.sessions() as session:
        assert repository.list_rollouts(session) == []
    forced = start(runtime, plan, force="canary slot drained by hand, verified")
    _, events = state(runtime, forced)
    event = next(e for e in events if e.kind == "forced_start")
    assert "gives 30% to canary" in event.data["problem"]
    assert event.actor == "tester"


def test_the_stable_version_must_be_the_recorded_one(world) -> None:
    runtime, _, router, clock, _ = world
    first = start(runtime, make_plan())
    run_until_settled(runtime, clock, first)
    router.weight = 0
    with pytest.raises(OperationError, match="^stable: the store records 2.0"):
        start(runtime, make_plan(), "3.0", stable="1.0")


def test_a_paused_canary_with_traffic_is_still_measured_and_rolled_back(world) -> None:
    runtime, metrics, router, clock, enqueued = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    assert router.weight == 10
    with runtime.sessions() as session:
        assert pause_rollout(
            session, rollout_id, reason="lunch", actor="alice", now=clock.now
        ).accepted
    clock.now += timedelta(seconds=5)
    with runtime.sessions() as session:  # reconcile hands it out like a running one
        assert rollout_id in repository.due_for_advance(session, clock.now)
    result = advance(runtime, rollout_id)
    assert result.acted and "still watched" in result.summary
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "paused" and rollout.step_index == 0

    metrics.errors = 900.0  # the canary breaks while nobody is looking
    clock.now = state(runtime, rollout_id)[0].next_check_at
    advance(runtime, rollout_id)
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "rolling_back" and rollout.tripped_criterion == "errors"
    assert enqueued == [rollout_id]


def test_reconcile_picks_up_paused_rollouts_only_while_they_carry_traffic(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        pause_rollout(session, rollout_id, reason="before traffic", actor="a", now=clock.now)
        assert rollout_id not in repository.due_for_advance(session, clock.now)
    advance(runtime, rollout_id)  # a stray advance changes nothing
    assert state(runtime, rollout_id)[0].weight is None


def test_the_progress_deadline_rolls_back_a_canary_left_paused(world) -> None:
    runtime, _, router, clock, enqueued = world
    plan = with_traffic("", analysis=", progress_deadline: 30s, on_progress_deadline: rollback")
    rollout_id = start(runtime, plan)
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        pause_rollout(session, rollout_id, reason="investigating", actor="bob", now=clock.now)
    for _ in range(8):
        clock.now += timedelta(seconds=5)
        advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rolling_back"
    deadline = next(e for e in events if e.kind == "progress_deadline")
    assert deadline.data["policy"] == "rollback" and deadline.data["waited_seconds"] >= 30


def test_the_progress_deadline_only_notifies_by_default(world) -> None:
    runtime, _, _, clock, _ = world
    sent = notified(runtime)
    plan = with_notifications(with_traffic("", analysis=", progress_deadline: 10s"))
    rollout_id = start(runtime, plan)
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        pause_rollout(session, rollout_id, reason="x", actor="bob", now=clock.now)
    for _ in range(6):
        clock.now += timedelta(seconds=5)
        advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "paused"
    assert len([e for e in events if e.kind == "progress_deadline"]) == 1
    assert sent.count("progress_deadline") == 1


def test_a_weight_changed_behind_our_back_is_a_drift_and_is_reasserted(world) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    router.weight = 0  # an HAProxy reload without the server-state file
    clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    drift = next(e for e in events if e.kind == "drift")
    assert drift.data == {"expected": 10, "actual": 0, "policy": "reassert"}
    assert router.weight == 10 and rollout.weight == 10 and rollout.state == "running"
    assert rollout.step_started_at == clock.now  # the hold starts again


def test_a_drift_is_not_reasserted_onto_a_canary_the_router_holds_down(world) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    router.weight = 0  # a reload reset it...
    router.down["canary"] = "HAProxy server checkout/green is in maintenance"  # ...and this
    clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert router.weight == 0 and rollout.weight == 0 and rollout.state == "running"
    assert "re-asserting 10% after a drift: the canary cannot take traffic" in events[-1].message
    del router.down["canary"]
    clock.now = rollout.next_check_at
    advance(runtime, rollout_id)
    assert router.weight == 10 and state(runtime, rollout_id)[0].weight == 10


def test_drift_can_pause_the_rollout(world) -> None:
    runtime, _, router, clock, _ = world
    plan = with_traffic("", analysis=", on_drift: pause")
    rollout_id = start(runtime, plan)
    advance(runtime, rollout_id)
    router.weight = 40
    clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "paused" and rollout.weight == 40  # the record shows the truth


def test_a_step_that_loses_its_commit_records_what_the_router_carries(world) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    original = router.set_canary_weight

    def set_then_someone_pauses(weight: int) -> None:
        original(weight)
        with runtime.sessions() as session:  # a person's pause lands mid-step
            pause_rollout(session, rollout_id, reason="hold on", actor="carol", now=clock.now)

    router.set_canary_weight = set_then_someone_pauses  # type: ignore[method-assign]
    result = advance(runtime, rollout_id)
    assert not result.acted
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "paused" and router.weight == 10 and rollout.weight == 10
    assert any(e.kind == "weight_recorded" for e in events)


def test_redeploy_mode_waits_for_the_stable_slot_to_serve_the_new_version(
    world, monkeypatch
) -> None:
    runtime, _, router, clock, _ = world
    hooks: list[dict[str, str]] = []
    serving = {"stable": "1.0"}
    monkeypatch.setattr(
        engine, "run_hook", lambda hook, values: (hooks.append(values), (True, "202"))[1]
    )
    # What each slot answers at /version: blue (stable) the old version until the
    # redeploy finishes, green (canary) the new one.
    monkeypatch.setattr(
        slots,
        "served_version",
        lambda url, check: serving["stable"] if "blue" in url else "2.0",
    )
    plan = with_traffic(
        """mode: redeploy
slot_urls: {blue: "http://blue", green: "http://green"}
version_check: {path: /version}
redeploy: {command: [deploy, "{{ stable_slot }}", "{{ deploy_version }}"]}"""
    )
    rollout_id = start(runtime, plan)
    for _ in range(12):
        rollout, _ = state(runtime, rollout_id)
        clock.now = max(clock.now, rollout.next_check_at)
        advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "running" and router.weight == 100
    assert len(hooks) == 1 and hooks[0]["stable_slot"] == "blue"
    assert "waiting for the redeploy" in advance_summary(runtime, clock, rollout_id)

    serving["stable"] = "2.0"  # the deploy finished
    run_until_settled(runtime, clock, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "succeeded" and router.weight == 0 and rollout.weight == 0
    with runtime.sessions() as session:
        assert repository.stable_release(session, "api").stable_slot == "blue"


def test_redeploy_moves_traffic_back_only_once_the_router_held_the_slot_up_to_settle(
    world, monkeypatch
) -> None:
    """The stable slot answers the new version right after a fast restart while HAProxy
    still holds it up from before (its checks have not failed yet): traffic stays on
    the canary until the router has held the slot up, unchanged, for
    ``redeploy_settle``; a down state or a change the router saw starts it over."""
    runtime, _, router, clock, _ = world
    deployed = []
    monkeypatch.setattr(
        engine, "run_hook", lambda hook, values: (deployed.append(1), (True, ""))[1]
    )
    # blue (stable) serves the new version once the hook ran: a fast restart.
    monkeypatch.setattr(
        slots,
        "served_version",
        lambda url, check: "1.0" if "blue" in url and not deployed else "2.0",
    )
    plan = with_traffic(
        """mode: redeploy
slot_urls: {blue: "http://blue", green: "http://green"}
version_check: {path: /version}
redeploy: {command: [deploy, "{{ deploy_version }}"]}
redeploy_settle: 10s"""
    )
    router.unchanged_for["stable"] = 3600.0  # up since long before the restart
    rollout_id = start(runtime, plan)
    summaries = [advance_summary(runtime, clock, rollout_id)]
    while "settling" not in summaries[-1] and len(summaries) < 20:
        summaries.append(advance_summary(runtime, clock, rollout_id))
    assert "settling, 0s of 10s" in summaries[-1] and router.weight == 100, summaries
    router.down["stable"] = "HAProxy server api/blue is down (its health check fails)"
    assert "is down" in advance_summary(runtime, clock, rollout_id)  # HAProxy noticed
    del router.down["stable"]
    router.unchanged_for["stable"] = 0.0  # up again just now
    assert "settling, 0s of 10s" in advance_summary(runtime, clock, rollout_id)
    router.unchanged_for["stable"] = 1.0  # a blip between two checks: down and up again
    assert "settling, 1s of 10s" in advance_summary(runtime, clock, rollout_id)
    came_up = clock.now - timedelta(seconds=1)
    assert router.weight == 100
    for _ in range(10):  # the router's clock of the slot's state runs on
        if state(runtime, rollout_id)[0].state != "running":
            break
        clock.now = state(runtime, rollout_id)[0].next_check_at
        router.unchanged_for["stable"] = (clock.now - came_up).total_seconds()
        advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "succeeded" and router.weight == 0
    moved = next(e for e in events if e.kind == "weight_set" and e.data.get("kind") == "redeploy")
    assert moved.at - came_up >= timedelta(seconds=10)


def advance_summary(runtime: Runtime, clock: Clock, rollout_id: str) -> str:
    clock.now = max(clock.now, state(runtime, rollout_id)[0].next_check_at)
    return advance(runtime, rollout_id).summary


def test_redeploy_mode_needs_a_hook_and_a_version_check() -> None:
    with pytest.raises(PlanError, match="mode redeploy needs a redeploy hook"):
        with_traffic("mode: redeploy")
    with pytest.raises(PlanError, match="needs version_check"):
        with_traffic(
            'mode: redeploy\nslot_urls: {blue: "http://b", green: "http://g"}\n'
            'redeploy: {command: [deploy, "{{ deploy_version }}"]}'
        )
    with pytest.raises(PlanError, match="slot_urls: give the URL of exactly the servers"):
        with_traffic('slot_urls: {blue: "http://b", canary: "http://c"}')


def test_an_inconclusive_check_between_two_failures_neither_ends_nor_hides_a_breach(
    world,
) -> None:
    """Like Prometheus `for:`, a breach trips once it has lasted `sustained_for` and
    only a pass ends it; unlike `for:`, a check without data in the middle does not
    reset it, so flaky data cannot hide a breach that goes on."""
    runtime, metrics, _, clock, _ = world
    rollout_id = start(runtime, make_plan(sustained="10s"))
    advance(runtime, rollout_id)
    for total, errors in ((1000.0, 200.0), (None, 200.0), (1000.0, 200.0)):
        metrics.total, metrics.errors = total, errors
        clock.now += timedelta(seconds=5)
        advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    verdicts = [e.data["verdict"] for e in events if e.kind == "measurement"]
    assert verdicts[-3:] == ["fail", "inconclusive", "fail"]
    assert rollout.state == "rolling_back" and rollout.tripped_criterion == "errors"


def test_a_breach_does_not_survive_a_pause_and_resume(world) -> None:
    runtime, metrics, _, clock, _ = world
    rollout_id = start(runtime, make_plan(sustained="10s"))
    advance(runtime, rollout_id)
    metrics.errors = 200.0
    clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)  # the breach begins
    with runtime.sessions() as session:
        pause_rollout(session, rollout_id, reason="look", actor="a", now=clock.now)
        clock.now += timedelta(seconds=20)
        resume_rollout(session, rollout_id, actor="a", now=clock.now)
    advance(runtime, rollout_id)  # failing again, but measured anew since the resume
    assert state(runtime, rollout_id)[0].state == "running"
    clock.now += timedelta(seconds=10)
    advance(runtime, rollout_id)
    assert state(runtime, rollout_id)[0].state == "rolling_back"
