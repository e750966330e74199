"""Rare paths where "rolled back" must still mean traffic on the stable version.

Each test reproduces one path on a real SQLite store with the fake router, metrics
and clock of ``test_state_machine``: a rollback after the redeploy hook ran, a
rollback that lands while an advance is in flight, a decision and its request, a
canary waiting for an approval, a rollout resumed before its gates ran, two
deliveries of one rollback, a step that was never measured, a resume after a
redeploy timeout.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from textwrap import dedent

import pytest
from sqlalchemy import event, select

from controller import engine, slots, stable_restore
from controller import rollback as rollback_module
from controller.engine import advance
from controller.operations import pause_rollout, resume_rollout, rollback_rollout
from controller.plan import Plan
from controller.plan_loader import PlanError, parse_plan
from controller.rollback import rollback
from controller.runtime import Runtime
from controller.store import repository
from controller.store.models import Outbox, Rollout
from tests.unit.test_slots_and_watching import with_traffic
from tests.unit.test_state_machine import Clock, make_plan, start, state


def advance_when_due(runtime: Runtime, clock: Clock, rollout_id: str) -> str:
    clock.now = max(clock.now, state(runtime, rollout_id)[0].next_check_at)
    return advance(runtime, rollout_id).summary


class Slots:
    """What each slot answers at /version, and a redeploy hook that changes it."""

    def __init__(self) -> None:
        self.serving = {"blue": "1.0", "green": "2.0"}
        self.deploys: list[tuple[str, str]] = []

    def served(self, url: str, _check: object) -> str:
        return self.serving["blue" if "blue" in url else "green"]

    def hook(self, _hook: object, values: dict[str, str]) -> tuple[bool, str]:
        slot, version = values["stable_slot"], values["deploy_version"]
        self.deploys.append((slot, version))
        self.serving[slot] = version  # a fast deploy: it answers at once
        return True, "202"


REDEPLOY = """mode: redeploy
slot_urls: {blue: "http://blue", green: "http://green"}
version_check: {path: /version}
redeploy: {command: [deploy, "{{ stable_slot }}", "{{ deploy_version }}"]}
redeploy_settle: 10s"""


@pytest.fixture
def redeploy_world(world, monkeypatch):  # type: ignore[no-untyped-def]
    fake = Slots()
    monkeypatch.setattr(slots, "served_version", fake.served)
    monkeypatch.setattr(engine, "run_hook", fake.hook)
    monkeypatch.setattr(stable_restore, "run_hook", fake.hook)
    return (*world, fake)


def test_a_rollback_after_the_redeploy_hook_puts_the_stable_version_back_before_moving_traffic(
    redeploy_world,
) -> None:
    """The redeploy hook put 2.0 into the stable slot; while the controller waits for
    it to settle, the canary's errors trip. Setting the canary weight to 0 then would
    end the "rollback" on 2.0: the stable version is deployed back first, and traffic
    moves only once the stable slot answers 1.0 and the router has held it up."""
    runtime, metrics, router, clock, enqueued, fake = redeploy_world
    rollout_id = start(runtime, with_traffic(REDEPLOY))
    for _ in range(30):
        if "settling" in advance_when_due(runtime, clock, rollout_id):
            break
    assert fake.deploys == [("blue", "2.0")] and router.weight == 100

    metrics.errors = 500.0  # the new version fails while the stable slot settles
    advance_when_due(runtime, clock, rollout_id)
    assert state(runtime, rollout_id)[0].state == "rolling_back"

    rollback(runtime, rollout_id)
    rollout, _ = state(runtime, rollout_id)
    assert fake.deploys[-1] == ("blue", "1.0")  # the stable version goes back first
    assert router.weight == 100 and rollout.state == "rolling_back"  # not onto 2.0
    for _ in range(10):
        clock.now += timedelta(seconds=2)
        rollback(runtime, rollout_id)
        if state(runtime, rollout_id)[0].state != "rolling_back":
            break
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rolled_back" and router.weight == 0
    assert fake.serving["blue"] == "1.0"
    moved = next(e for e in events if e.kind == "weight_set" and e.data.get("rollback"))
    restored = next(e for e in events if e.kind == "redeploy" and e.data.get("rollback"))
    assert moved.at - restored.at >= timedelta(seconds=10)  # held up for redeploy_settle
    with runtime.sessions() as session:
        assert repository.stable_release(session, "api") is None  # 1.0 stays stable


def test_a_rollback_that_cannot_put_the_stable_version_back_fails_loudly(
    redeploy_world, monkeypatch
) -> None:
    runtime, metrics, router, clock, _, fake = redeploy_world
    rollout_id = start(runtime, with_traffic(REDEPLOY + "\nredeploy_timeout: 20s"))
    for _ in range(30):
        if "settling" in advance_when_due(runtime, clock, rollout_id):
            break
    monkeypatch.setattr(stable_restore, "run_hook", lambda hook, values: (False, "exit 1"))
    metrics.errors = 500.0
    advance_when_due(runtime, clock, rollout_id)
    for _ in range(15):
        clock.now += timedelta(seconds=2)
        rollback(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rollback_failed" and router.weight == 100
    failed = [e for e in events if e.kind == "rollback_failed"]
    assert len(failed) == 1 and "does not serve 1.0" in failed[0].message


def test_a_rollback_does_not_end_on_a_stable_slot_that_serves_another_version(
    world, monkeypatch
) -> None:
    """Swap mode, but someone deployed 3.0 over the stable slot: the traffic goes
    there (nowhere is better), and the rollback says it did not end on 1.0."""
    runtime, metrics, router, clock, _ = world
    monkeypatch.setattr(
        slots, "served_version", lambda url, check: "3.0" if "blue" in url else "2.0"
    )
    plan = with_traffic(
        'slot_urls: {blue: "http://blue", green: "http://green"}\nversion_check: {path: /version}'
    )
    rollout_id = start(runtime, plan)
    advance_when_due(runtime, clock, rollout_id)
    with runtime.sessions() as session:
        rollback_rollout(session, rollout_id, reason="test", actor="carol", now=clock.now)
    rollback(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rollback_failed" and router.weight == 0 and rollout.weight == 0
    assert (
        "serves 3.0, expected 1.0" in next(e for e in events if e.kind == "rollback_failed").message
    )


def test_an_advance_that_loses_its_commit_to_a_rollback_puts_the_canary_back_at_once(
    world, monkeypatch
) -> None:
    """The broker is down, so the API shifts traffic itself: it reads back 0 but cannot
    take the lease of an advance in flight, which then raises the weight to 10 %. The
    advance loses its commit; it must not leave 10 % on the canary of a rollout that is
    rolling back (nobody else would look: the broker is down)."""
    runtime, _, router, clock, _ = world
    monkeypatch.setattr(rollback_module, "LEASE_WAIT_SECONDS", 0.0)
    rollout_id = start(runtime, make_plan())
    api = replace(runtime, owner="api")  # another process: the advance's lease is not its
    original = router.set_canary_weight
    landed = []

    def api_rollback_lands_first(weight: int) -> None:
        if not landed:
            landed.append(weight)
            with runtime.sessions() as session:
                rollback_rollout(session, rollout_id, reason="alert", actor="api", now=clock.now)
            rollback(api, rollout_id)  # the API's own shift: 0, read back, no lease
            assert router.weight == 0
        original(weight)

    router.set_canary_weight = api_rollback_lands_first  # type: ignore[method-assign]
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert landed == [10] and rollout.state == "rolling_back"
    assert router.weight == 0, router.history
    undone = [e for e in events if e.kind == "weight_set" and e.data.get("previous") == 10]
    assert undone and undone[-1].data["weight"] == 0


def test_a_rollback_decision_is_never_committed_without_its_request(world) -> None:
    """Every commit that writes a rollback decision also marks the rollout for
    rollback: a worker killed between two commits must not leave "decision: rollback"
    in the log of a rollout still running."""
    runtime, metrics, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    advance_when_due(runtime, clock, rollout_id)
    seen: list[tuple[str, bool]] = []

    def check_after_commit(_session) -> None:  # type: ignore[no-untyped-def]
        with runtime.sessions() as fresh:
            rollout = repository.get_rollout(fresh, rollout_id)
            decided = any(
                e.data.get("decision") == "rollback"
                for e in repository.events_for(fresh, rollout_id, ["decision"])
            )
            seen.append((rollout.state, decided))

    metrics.errors = 500.0
    event.listen(runtime.sessions, "after_commit", check_after_commit)
    try:
        advance_when_due(runtime, clock, rollout_id)
    finally:
        event.remove(runtime.sessions, "after_commit", check_after_commit)
    assert any(decided for _, decided in seen)
    assert [s for s, decided in seen if decided and s != "rolling_back"] == [], seen


def approval_plan() -> Plan:
    return parse_plan(
        dedent(
            """
            name: unit
            owners: {release_manager: [alice]}
            analysis: {interval: 5s, window: 30s, inconclusive_limit: 3, error_limit: 2}
            gates: {recheck_interval: 5m}
            stages:
              - {name: canary, kind: canary, weight: 10, hold: 20s}
              - name: ramp
                kind: ramp
                approval: [release_manager]
                steps: [{weight: 50, hold: 10s}, {weight: 100, hold: 10s}]
            stop_criteria:
              - name: errors
                judge: ratio_threshold
                max_ratio: 0.05
                min_requests: 10
                errors: errors{v="{{ canary_version }}"}
                total: total{v="{{ canary_version }}"}
            """
        )
    )


def test_a_canary_awaiting_a_stage_approval_is_measured_every_analysis_interval(world) -> None:
    runtime, metrics, router, clock, _ = world
    rollout_id = start(runtime, approval_plan())
    for _ in range(20):
        advance_when_due(runtime, clock, rollout_id)
        if state(runtime, rollout_id)[0].state == "blocked":
            break
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "blocked" and router.weight == 10
    assert rollout.next_check_at - clock.now <= timedelta(seconds=5)
    metrics.errors = 500.0  # the canary goes bad while nobody approves
    tripped_at = clock.now
    for _ in range(5):
        advance_when_due(runtime, clock, rollout_id)
        if state(runtime, rollout_id)[0].state == "rolling_back":
            break
    assert state(runtime, rollout_id)[0].state == "rolling_back"
    assert clock.now - tripped_at <= timedelta(seconds=10)


def test_a_rollout_resumed_before_its_gates_ran_runs_them_in_an_advance_of_their_own(
    world, monkeypatch
) -> None:
    """Paused while pending, then resumed: the gates that take time still run alone,
    not beside the first step's traffic move, smoke suite and soak."""
    runtime, _, router, clock, _ = world
    ran: list[int] = []
    monkeypatch.setattr(engine.checks, "preflight", lambda gates, m, v: ran.append(1) or [])
    data = make_plan().model_dump(mode="json")
    data["gates"]["http"] = [{"name": "ci", "url": "http://127.0.0.1:9/ci", "timeout": "20s"}]
    rollout_id = start(runtime, Plan.from_data(data))
    with runtime.sessions() as session:
        pause_rollout(session, rollout_id, reason="wait", actor="carol", now=clock.now)
        resume_rollout(session, rollout_id, actor="carol", now=clock.now)
    summary = advance_when_due(runtime, clock, rollout_id)
    assert ran == [1] and router.history == [], summary
    assert "first step begins at the next advance" in summary
    advance_when_due(runtime, clock, rollout_id)
    assert router.history == [10]


def test_two_deliveries_of_one_rollback_promise_one_runbook(world) -> None:
    """Two deliveries of one rollback (a redispatch while the first still runs) both
    find the router down: one rollback_failed, one runbook, one notification."""
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    advance_when_due(runtime, clock, rollout_id)
    runtime.send_outbox = lambda row_id, kind, rollout_id: None  # keep the rows
    with runtime.sessions() as session:
        rollback_rollout(session, rollout_id, reason="test", actor="carol", now=clock.now)
    router.fail_sets = 1_000
    original = router.set_canary_weight
    nested: list[str] = []

    other_worker = replace(runtime, owner="another-worker")

    def second_delivery(weight: int) -> None:
        if not nested:
            nested.append("running")
            nested.append(rollback(other_worker, rollout_id).summary)
        original(weight)

    router.set_canary_weight = second_delivery  # type: ignore[method-assign]
    rollback(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rollback_failed"
    assert [e.kind for e in events].count("rollback_failed") == 1
    with runtime.sessions() as session:
        runbooks = session.scalars(select(Outbox).where(Outbox.kind == "runbook")).all()
    assert len(runbooks) == 1


@pytest.mark.parametrize(
    ("stages", "where"),
    [
        ("- {name: canary, kind: canary, weight: 10, hold: 0s}", "stages[0].hold"),
        (
            "- {name: ramp, kind: ramp, steps: [{weight: 50, hold: 10s}, {weight: 100, hold: 0s}]}",
            "stages[0].steps[1].hold",
        ),
    ],
)
def test_a_step_with_traffic_and_no_hold_is_refused(stages: str, where: str) -> None:
    text = f"name: unit\nstages:\n{stages}\n"
    with pytest.raises(PlanError) as refused:
        parse_plan(text)
    problem = str(refused.value)
    assert f"{where}: 0s would promote the step on data from before its traffic moved" in problem


def test_a_stored_plan_with_a_step_of_no_hold_still_loads() -> None:
    data = make_plan().model_dump(mode="json")
    data["stages"][0]["hold"] = "0s"
    assert Plan.from_stored(data).steps()[0].hold == timedelta(0)
    with pytest.raises(ValueError, match="would promote the step"):
        Plan.from_data(data)


def test_resuming_after_a_redeploy_timeout_gives_the_redeploy_a_new_timeout(
    redeploy_world, monkeypatch
) -> None:
    runtime, _, router, clock, _, fake = redeploy_world
    monkeypatch.setattr(engine, "run_hook", lambda hook, values: (True, "202"))  # never lands
    rollout_id = start(runtime, with_traffic(REDEPLOY + "\nredeploy_timeout: 30s"))
    for _ in range(40):
        advance_when_due(runtime, clock, rollout_id)
        if state(runtime, rollout_id)[0].state == "paused":
            break
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "paused" and "redeploy began" in rollout.reason
    with runtime.sessions() as session:
        resume_rollout(session, rollout_id, actor="carol", now=clock.now)
    summary = advance_when_due(runtime, clock, rollout_id)
    assert state(runtime, rollout_id)[0].state == "running", summary
    assert "waiting for the redeploy" in summary


def test_the_decision_to_roll_back_and_the_rollout_row_agree(world) -> None:
    """After the advance that trips: the row is rolling_back with the trigger, and the
    request event follows the decision in the log."""
    runtime, metrics, _, clock, enqueued = world
    rollout_id = start(runtime, make_plan())
    advance_when_due(runtime, clock, rollout_id)
    metrics.errors = 500.0
    advance_when_due(runtime, clock, rollout_id)
    rollout, events = state(runtime, rollout_id)
    kinds = [e.kind for e in events]
    assert rollout.state == "rolling_back" and rollout.tripped_criterion == "errors"
    assert rollout.analysis["trigger"]["kind"] == "criterion"
    assert kinds.index("rollback_requested") > kinds.index("decision")
    assert enqueued == [rollout_id]
    with runtime.sessions() as session:
        assert session.scalar(select(Rollout.state).where(Rollout.id == rollout_id)) == (
            "rolling_back"
        )


def test_an_http_redeploy_hook_names_the_version_in_its_body() -> None:
    """The hook's URL may come from the environment as it is; the version it deploys
    goes in its JSON body, filled from the rollout's values."""
    from controller.hooks import filled

    body = {"deploy": {"version": "{{ deploy_version }}", "slot": "{{ stable_slot }}"}, "n": 1}
    values = {"deploy_version": "1.0", "stable_slot": "blue"}
    assert filled(body, values) == {"deploy": {"version": "1.0", "slot": "blue"}, "n": 1}
    assert filled(["{{ unknown }}"], values) == ["{{ unknown }}"]
