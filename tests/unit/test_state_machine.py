"""The rollout state machine with a fake clock, fake metrics and a fake router.

The store is a real SQLite file; only the outside world is faked. What is checked
here is the logic: when to hold, promote, pause, trip and roll back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from textwrap import dedent

import pytest

from controller.engine import advance, next_tick
from controller.metrics.prometheus import MetricsError, Sample
from controller.operations import OperationError, abort_rollout, approve_rollout, start_rollout
from controller.outbox import run_outbox_row
from controller.plan import Plan
from controller.plan_loader import parse_plan
from controller.rollback import rollback
from controller.runtime import Runtime
from controller.store import repository
from controller.store.db import migrate, session_factory
from controller.traffic.base import RouterError, Serving

PLAN = """
name: unit
analysis: {{interval: 5s, window: 30s, inconclusive_limit: 3, error_limit: 2, on_limit: {on_limit}}}
stages:
  - {{name: canary, kind: canary, weight: 10, hold: 20s}}
  - {{name: ramp, kind: ramp, steps: [{{weight: 50, hold: 10s}}, {{weight: 100, hold: 10s}}]}}
stop_criteria:
  - name: errors
    judge: ratio_threshold
    max_ratio: 0.05
    min_requests: 10
    sustained_for: {sustained}
    errors: errors{{v="{{{{ canary_version }}}}"}}
    total: total{{v="{{{{ canary_version }}}}"}}
"""


def make_plan(on_limit: str = "pause", sustained: str = "0s") -> Plan:
    return parse_plan(dedent(PLAN.format(on_limit=on_limit, sustained=sustained)))


def with_notifications(plan: Plan) -> Plan:
    """The plan with a webhook for every lifecycle kind (never called: see ``notified``)."""
    data = plan.model_dump(mode="json")
    data["notifications"] = [{"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/"}]
    return Plan.from_data(data)


def notified(runtime: Runtime) -> list[str]:
    """Capture the lifecycle notifications sent through the outbox (their kinds); other
    outbox rows (runbooks) still run in-process."""
    sent: list[str] = []
    run = runtime.send_outbox

    def send(row_id: int, kind: str, rollout_id: str) -> None:
        if kind != "notify":
            if run is None:
                run_outbox_row(runtime, row_id)  # in this process, as by default
            else:
                run(row_id, kind, rollout_id)
            return
        with runtime.sessions() as session:
            row = repository.get_outbox(session, row_id)
            sent.append(row.payload["kind"])
            repository.finish_outbox(session, row_id, "captured", runtime.clock())

    runtime.send_outbox = send
    return sent


@dataclass
class FakeMetrics:
    errors: float | None = 0.0
    total: float | None = 1000.0
    down: bool = False
    calls: int = 0
    firing_alerts: list[str] = field(default_factory=list)

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        self.calls += 1
        if self.down:
            raise MetricsError(query, "connection refused")
        if query.startswith("ALERTS"):
            return [Sample({"alertname": name}, 1.0) for name in self.firing_alerts]
        value = self.errors if query.startswith("errors") else self.total
        return [] if value is None else [Sample({}, value)]

    def range(self, query, start, end, step_seconds):  # noqa: ANN001
        raise AssertionError("no range criteria in this plan")


@dataclass
class FakeRouter:
    weight: int = 0
    fail_sets: int = 0
    lie: bool = False
    history: list[int] = field(default_factory=list)
    down: dict[str, str] = field(default_factory=dict)  # role -> why it takes no traffic
    unchanged_for: dict[str, float] = field(default_factory=dict)  # role -> seconds

    def set_canary_weight(self, weight: int) -> None:
        if self.fail_sets > 0:
            self.fail_sets -= 1
            raise RouterError("socket timeout")
        self.history.append(weight)
        self.weight = weight

    def get_canary_weight(self) -> int:
        return 7 if self.lie else self.weight

    def serving(self, role: str) -> Serving:
        return Serving(self.down.get(role), self.unchanged_for.get(role))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def sqlite_runtime(tmp_path, metrics, router, clock, **options) -> Runtime:  # type: ignore[no-untyped-def]
    """A runtime on a real SQLite store of its own, with these fakes for the rest."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    return Runtime(
        sessions=session_factory(url),
        metrics=metrics,
        router_for=lambda plan, variables: router,
        clock=clock,
        owner="test-worker",
        **options,
    )


@pytest.fixture
def world(tmp_path):
    metrics, router, clock, enqueued = FakeMetrics(), FakeRouter(), Clock(), []
    runtime = sqlite_runtime(
        tmp_path,
        metrics,
        router,
        clock,
        rollback_backoff_seconds=0,
        enqueue_rollback=enqueued.append,
    )
    return runtime, metrics, router, clock, enqueued


def start(
    runtime: Runtime,
    plan: Plan,
    version: str = "2.0",
    stable: str | None = "1.0",
    force: str | None = None,
) -> str:
    """Start a rollout of the service ``api``; its id."""
    with runtime.sessions() as session:
        return start_rollout(
            session,
            plan,
            service="api",
            version=version,
            stable=stable,
            created_by="tester",
            now=runtime.clock(),
            router_for=runtime.router_for,
            force_reason=force,
        ).id


def state(runtime: Runtime, rollout_id: str):
    with runtime.sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        events = list(repository.events_for(session, rollout_id))
    return rollout, events


def run_until_settled(runtime: Runtime, clock: Clock, rollout_id: str, limit: int = 100) -> None:
    """Advance whenever due, moving the clock to the next check, until nothing is due."""
    for _ in range(limit):
        rollout, _ = state(runtime, rollout_id)
        if rollout.state not in ("pending", "running"):
            return
        clock.now = max(clock.now, rollout.next_check_at)
        advance(runtime, rollout_id)
    raise AssertionError("rollout never settled")


def test_healthy_rollout_walks_every_step_and_succeeds(world) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    run_until_settled(runtime, clock, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "succeeded" and rollout.weight == 100
    assert router.history == [10, 50, 100]
    assert [e.data["weight"] for e in events if e.kind == "weight_set"] == [10, 50, 100]
    completed = [e.step_index for e in events if e.kind == "step_completed"]
    assert completed == [0, 1, 2]
    # The canary held its full 20 s before the ramp.
    weight_times = [e.at for e in events if e.kind == "weight_set"]
    assert weight_times[1] - weight_times[0] >= timedelta(seconds=20)


def test_every_measurement_keeps_query_value_limit_and_verdict(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    _, events = state(runtime, rollout_id)
    m = next(e for e in events if e.kind == "measurement")
    assert m.data["queries"] == {"errors": 'errors{v="2.0"}', "total": 'total{v="2.0"}'}
    assert m.data["value"] == 0.0 and m.data["limit"] == 0.05 and m.data["verdict"] == "pass"


def test_failure_trips_only_after_it_is_sustained(world) -> None:
    runtime, metrics, router, clock, enqueued = world
    rollout_id = start(runtime, make_plan(sustained="10s"))
    advance(runtime, rollout_id)
    metrics.errors = 200.0
    for _ in range(2):  # fails at t+5 and t+10: breach lasted 5 s, not yet 10 s
        clock.now += timedelta(seconds=5)
        advance(runtime, rollout_id)
        assert state(runtime, rollout_id)[0].state == "running"
    clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rolling_back" and rollout.tripped_criterion == "errors"
    assert enqueued == [rollout_id]
    decision = [e for e in events if e.kind == "decision"][-1]
    assert decision.data["criterion"] == "errors" and "failing for 10s" in decision.message

    result = rollback(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert result.state == "rolled_back" and rollout.state == "rolled_back"
    assert router.weight == 0 and rollout.weight == 0
    assert [e.data["weight"] for e in events if e.kind == "weight_set"] == [10, 0]


def test_a_pass_ends_a_breach(world) -> None:
    runtime, metrics, _, clock, _ = world
    rollout_id = start(runtime, make_plan(sustained="10s"))
    advance(runtime, rollout_id)
    for errors in (200.0, 200.0, 0.0, 200.0, 200.0):
        metrics.errors = errors
        clock.now += timedelta(seconds=5)
        advance(runtime, rollout_id)
    assert state(runtime, rollout_id)[0].state == "running"


def test_inconclusive_never_promotes_and_pauses_at_the_limit(world) -> None:
    runtime, metrics, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    metrics.total = 3.0  # below min_requests
    for _ in range(2):
        advance(runtime, rollout_id)
        clock.now += timedelta(seconds=30)  # the hold is long over
    assert state(runtime, rollout_id)[0].state == "running"
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "paused" and "inconclusive" in rollout.reason
    assert router.history == [10] and not [e for e in events if e.kind == "step_completed"]


def test_prometheus_down_is_error_never_pass(world) -> None:
    runtime, metrics, router, clock, enqueued = world
    rollout_id = start(runtime, make_plan(on_limit="rollback"))
    metrics.down = True
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert [e.data["verdict"] for e in events if e.kind == "measurement"] == ["error"]
    clock.now += timedelta(seconds=30)
    advance(runtime, rollout_id)
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "rolling_back" and "ended in an error" in rollout.reason
    assert "Prometheus" in rollout.reason
    assert router.history == [10] and enqueued == [rollout_id]


def test_router_that_does_not_confirm_holds_the_step(world) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    router.lie = True
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.weight is None and rollout.step_started_at is None
    assert [e.kind for e in events][-1] == "router_error"
    assert "reads back 7%" in events[-1].message
    router.lie = False
    clock.now = rollout.next_check_at
    advance(runtime, rollout_id)
    assert state(runtime, rollout_id)[0].weight == 10


def test_traffic_is_never_raised_onto_a_canary_the_router_holds_down(world) -> None:
    """A weight is a share among the servers the router holds up: 50 % onto a canary
    whose health check fails tests nothing, and 100 % would send users nowhere."""
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    run_until_settled_at(runtime, clock, rollout_id, weight=10)
    router.down["canary"] = "HAProxy server api/green is down (its health check fails)"
    clock.now += timedelta(seconds=30)  # the 10 % hold is over: the ramp is due
    for _ in range(2):  # the step completes, then the next one asks for 50 %
        advance(runtime, rollout_id)
        clock.now = max(clock.now, state(runtime, rollout_id)[0].next_check_at)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "running" and rollout.weight == 10 and router.history == [10]
    refused = [e for e in events if e.kind == "router_error"]
    assert len(refused) == 1 and "not moved to 50%" in refused[0].message
    assert "the canary cannot take traffic" in refused[0].message
    assert "health check fails" in refused[0].message
    del router.down["canary"]
    run_until_settled(runtime, clock, rollout_id)
    assert state(runtime, rollout_id)[0].state == "succeeded" and router.history == [10, 50, 100]


def test_the_traffic_already_moved_is_judged_while_the_next_move_waits(world) -> None:
    """The ramp to 50 % is refused (the canary held down), and meanwhile the canary's
    errors at 10 % trip its criterion: it is rolled back, not left unwatched."""
    runtime, metrics, router, clock, enqueued = world
    rollout_id = start(runtime, make_plan())
    run_until_settled_at(runtime, clock, rollout_id, weight=10)
    router.down["canary"] = "HAProxy server api/green is down (its health check fails)"
    clock.now += timedelta(seconds=30)
    for _ in range(2):  # the step completes, then the next one asks for 50 %: refused
        advance(runtime, rollout_id)
        clock.now = max(clock.now, state(runtime, rollout_id)[0].next_check_at)
    metrics.errors = 200.0
    advance(runtime, rollout_id)  # refused again, and the 10 % measured
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rolling_back" and rollout.tripped_criterion == "errors"
    assert enqueued == [rollout_id] and router.history == [10]
    assert [e.kind for e in events].count("router_error") == 2


def rolled_back_on_errors(world, down: dict[str, str]):  # type: ignore[no-untyped-def]
    """A rollout whose canary trips its error criterion while the router holds the
    ``down`` sides down, rolled back; its id and events."""
    runtime, metrics, router, clock, enqueued = world
    rollout_id = start(runtime, make_plan(sustained="0s"))
    advance(runtime, rollout_id)
    router.down.update(down)
    metrics.errors = 200.0
    clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)
    assert enqueued == [rollout_id]
    assert rollback(runtime, rollout_id).state == "rolled_back" and router.weight == 0
    return rollout_id, state(runtime, rollout_id)[1]


def test_a_rollback_never_waits_for_the_router_to_hold_a_side_up(world) -> None:
    _, events = rolled_back_on_errors(
        world, {"canary": "down", "stable": "HAProxy server api/blue is down"}
    )
    # On-call hears that the stable side itself is failing.
    (warning,) = [e for e in events if e.kind == "stable_unavailable"]
    assert "all traffic is on stable 1.0, but HAProxy server api/blue is down" in warning.message


def test_a_rollback_onto_a_healthy_stable_side_says_nothing_more(world) -> None:
    _, events = rolled_back_on_errors(world, {})
    assert not [e for e in events if e.kind == "stable_unavailable"]


def run_until_settled_at(runtime: Runtime, clock: Clock, rollout_id: str, weight: int) -> None:
    """Advance until the rollout carries ``weight`` percent."""
    for _ in range(20):
        if state(runtime, rollout_id)[0].weight == weight:
            return
        clock.now = max(clock.now, state(runtime, rollout_id)[0].next_check_at)
        advance(runtime, rollout_id)
    raise AssertionError(f"rollout never reached {weight}%")


def test_lease_keeps_a_second_worker_out(world) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        assert (
            repository.claim(
                session, rollout_id, "other-worker", clock(), runtime.lease, ["pending", "running"]
            )
            is not None
        )
    result = advance(runtime, rollout_id)
    assert not result.acted and router.history == []
    clock.now += runtime.lease + timedelta(seconds=1)  # the other worker died
    assert advance(runtime, rollout_id).acted and router.history == [10]


def test_rollback_retries_then_fails_loudly_and_recovers(world) -> None:
    runtime, metrics, router, clock, _ = world
    sent = notified(runtime)
    rollout_id = start(runtime, with_notifications(make_plan()))
    advance(runtime, rollout_id)
    sent.clear()
    with runtime.sessions() as session:
        abort_rollout(session, rollout_id, reason="bad smell", actor="alice", now=clock())
    router.fail_sets = 100
    result = rollback(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert result.state == "rollback_failed" and rollout.state == "rollback_failed"
    failure = next(e for e in events if e.kind == "rollback_failed")
    assert "NOT confirmed" in failure.message
    step5 = [e for e in events if e.kind == "runbook"][-1]
    assert step5.data["step"] == 5 and step5.data["incident_id"].startswith("inc-")
    assert router.weight == 10 and sent == ["rollback_failed"]
    router.fail_sets = 0
    # Reconcile paces the retries: not due at once, due after 15 s, then taken (and
    # pushed ahead) so the next ticks do not dispatch it again while it runs.
    hold = timedelta(seconds=30)
    with runtime.sessions() as session:
        assert repository.take_due_rollbacks(session, clock(), hold) == []
    clock.now += timedelta(seconds=16)
    with runtime.sessions() as session:
        assert repository.take_due_rollbacks(session, clock(), hold) == [rollout_id]
        assert repository.take_due_rollbacks(session, clock(), hold) == []
    assert rollback(runtime, rollout_id).acted
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "aborted" and router.weight == 0
    assert "aborted by alice: bad smell" in rollout.reason
    assert sent == ["rollback_failed", "rolled_back"]


def test_start_refuses_bad_input_and_a_second_active_rollout(world) -> None:
    runtime, *_ = world
    plan = make_plan()
    start(runtime, plan)
    with runtime.sessions() as session:
        with pytest.raises(OperationError, match="already has an active rollout"):
            start_rollout(
                session,
                plan,
                service="api",
                version="3.0",
                stable="1.0",
                created_by="t",
                now=runtime.clock(),
                router_for=runtime.router_for,
            )
        with pytest.raises(OperationError, match="^version: "):
            start_rollout(
                session,
                plan,
                service="web",
                version='1"} or vector(1)',
                stable="1",
                created_by="t",
                now=runtime.clock(),
                router_for=runtime.router_for,
            )
        with pytest.raises(OperationError, match="^stable: no stable version"):
            start_rollout(
                session,
                plan,
                service="web",
                version="2",
                stable=None,
                created_by="t",
                now=runtime.clock(),
                router_for=runtime.router_for,
            )


def test_a_broken_runbook_step_is_recorded_and_the_others_still_run(world) -> None:
    runtime, _, router, clock, _ = world
    data = make_plan().model_dump(mode="json")
    # An unusable URL (httpx.InvalidURL, not an HTTP error) and no smoke checks at all.
    data["runbook"] = {
        "stable_healthchecks": [{"name": "health", "url": "http://a:b:c/healthz"}],
        "disable_canary": {"command": ["/bin/sh", "-c", "printf '\\377'; exit 3"]},
    }
    rollout_id = start(runtime, Plan.from_data(data))
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        abort_rollout(session, rollout_id, reason="bad smell", actor="alice", now=clock())
    rollback(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    steps = {e.data["step"]: e for e in events if e.kind == "runbook"}
    assert rollout.state == "aborted" and router.weight == 0
    assert steps[1].data["ok"]
    assert not steps[2].data["ok"] and "InvalidURL" in steps[2].data["detail"]
    assert steps[3].data.get("skipped") and "skipped" in steps[3].message
    assert not steps[4].data["ok"] and "exited 3" in steps[4].data["detail"]
    assert steps[5].data["ok"] and "no incident webhook" in steps[5].data["detail"]


def test_an_incident_the_webhook_refused_fails_step_five(world) -> None:
    runtime, _, router, clock, _ = world
    runtime.post_incident = lambda document: "failed: HTTP 503 after 3 attempt(s)"
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        abort_rollout(session, rollout_id, reason="bad smell", actor="alice", now=clock())
    rollback(runtime, rollout_id)
    _, events = state(runtime, rollout_id)
    step5 = [e for e in events if e.kind == "runbook"][-1]
    assert step5.data["step"] == 5 and not step5.data["ok"] and "FAILED" in step5.message
    assert router.weight == 0


def test_a_rollout_blocked_by_its_gates_still_starts_once(world) -> None:
    runtime, _, router, clock, _ = world
    data = make_plan().model_dump(mode="json")
    data["owners"] = {"release_manager": ["alice"]}
    data["gates"] = {"approvals": [{"role": "release_manager"}], "recheck_interval": "10s"}
    sent = notified(runtime)
    rollout_id = start(runtime, with_notifications(Plan.from_data(data)))
    for _ in range(3):  # rechecked, still waiting for the same approval
        advance(runtime, rollout_id)
        clock.now += timedelta(seconds=11)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "blocked" and router.history == []
    assert [e.kind for e in events].count("blocked") == 1  # one per change of reason
    with runtime.sessions() as session:
        approve_rollout(session, rollout_id, name="alice", now=clock())
    advance(runtime, rollout_id)
    clock.now += timedelta(seconds=6)
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "running" and router.history == [10]
    assert [e.kind for e in events].count("started") == 1
    assert sent.count("started") == 1 and sent.index("blocked") < sent.index("started")


def soak_plan(**soak: object) -> Plan:
    data = make_plan().model_dump(mode="json")
    data["stages"].insert(0, {"name": "soak", "kind": "soak", "duration": "10s", **soak})
    return Plan.from_data(data)


def test_a_failed_healthcheck_during_the_soak_fails_it_before_any_traffic(world) -> None:
    runtime, _, router, _, _ = world
    closed = "http://127.0.0.1:9/healthz"  # the discard port: nothing answers
    rollout_id = start(runtime, soak_plan(healthchecks=[{"name": "health", "url": closed}]))
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rolling_back" and "failed healthcheck: health" in rollout.reason
    assert any(e.kind == "healthcheck" and not e.data["ok"] for e in events)
    assert router.history == [0]


def test_a_firing_p0_alert_holds_the_end_of_the_soak(world) -> None:
    runtime, metrics, router, clock, _ = world
    plan = soak_plan(alerts_quiet='ALERTS{service="{{ service }}"}')
    rollout_id = start(runtime, plan)
    metrics.firing_alerts = ["CheckoutDown"]
    advance(runtime, rollout_id)
    clock.now += timedelta(seconds=11)
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.step_index == 0 and router.history == [0]
    exits = [e for e in events if e.kind == "verification"]
    assert exits and "soak exit checks: alerts-quiet: FAILED (firing: CheckoutDown)" in (
        exits[-1].message
    )
    metrics.firing_alerts = []
    clock.now = rollout.next_check_at
    advance(runtime, rollout_id)
    rollout, _ = state(runtime, rollout_id)
    assert rollout.step_index == 1


def test_a_soak_with_load_comes_back_before_more_than_a_burst_is_due(world) -> None:
    runtime, _, _, clock, _ = world
    data = soak_plan(
        duration="2m", load={"url": "http://127.0.0.1:9/", "rate": 2, "max_error_ratio": 1}
    ).model_dump(mode="json")
    data["analysis"]["interval"] = "1m"
    rollout_id = start(runtime, Plan.from_data(data))
    advance(runtime, rollout_id)
    rollout, _ = state(runtime, rollout_id)
    assert rollout.next_check_at - clock() == timedelta(seconds=10)
    assert rollout.analysis["soak_load"]["sent"] == 2  # one second's worth at the start
    clock.now = rollout.next_check_at
    advance(runtime, rollout_id)
    assert state(runtime, rollout_id)[0].analysis["soak_load"]["sent"] == 2 + 20


def test_checks_keep_the_plans_clock_when_advances_start_late(world) -> None:
    """Each check is due one interval after the previous one was due: an advance that
    starts 2 s late (a reconcile tick, a queue) does not push the ones after it."""
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)  # the canary weight is set; its hold begins
    rollout, _ = state(runtime, rollout_id)
    due = rollout.next_check_at
    for _ in range(3):
        clock.now = due + timedelta(seconds=2)
        advance(runtime, rollout_id)
        rollout, _ = state(runtime, rollout_id)
        assert rollout.next_check_at == due + timedelta(seconds=5)  # the plan's interval
        due = rollout.next_check_at


def test_a_check_missed_altogether_is_skipped_not_caught_up() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    every = timedelta(seconds=10)
    assert next_tick(t0, t0 + timedelta(seconds=2), every) == t0 + every
    assert next_tick(t0, t0 + timedelta(seconds=12), every) == t0 + 2 * every
    assert next_tick(t0, t0 + every, every) == t0 + 2 * every  # never "now" again
    assert next_tick(None, t0, every) == t0 + every
    early = t0 + timedelta(milliseconds=300)  # started a moment before due (clock skew)
    assert next_tick(early, t0, every) == early + every


def test_following_a_rollout_reads_only_new_events_and_misses_none(world) -> None:
    """``status --watch`` keeps its view from the events since its last read; what it
    shows is what a full read shows, also when an event with a lower id is committed
    after one with a higher id (sequences hand out ids before commits)."""
    from controller.views import DetailFollower, rollout_detail

    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    follower = DetailFollower(rollout_id, event_limit=500)
    for _ in range(4):
        clock.now += timedelta(seconds=5)
        advance(runtime, rollout_id)
        with runtime.sessions() as session:
            rollout = repository.get_rollout(session, rollout_id)
            followed = follower.read(session, rollout, now=clock.now)
            assert followed == rollout_detail(session, rollout, event_limit=500, now=clock.now)
    with runtime.sessions() as session:
        events = list(repository.events_for(session, rollout_id))
        late = events[-3]  # as if its transaction committed only now
        follower.taken.discard(late.id)
        follower.recent = type(follower.recent)(
            (e for e in follower.recent if e["id"] != late.id), maxlen=500
        )
        followed = follower.read(session, repository.get_rollout(session, rollout_id), clock.now)
    assert late.id in [e["id"] for e in followed["events"]]


def test_following_without_a_terminal_prints_one_line_per_change(capsys) -> None:
    """``status --watch`` / ``start --wait`` in a CI log or a pipe: a line when
    something changes, not a redraw, and it returns the final detail."""
    from controller.cli import _watch

    def detail(state: str, weight: int, message: str) -> dict:
        return {
            "id": "r-1",
            "state": state,
            "weight": weight,
            "steps": [{"label": "canary 10%", "status": "current"}],
            "events": [{"message": message}],
        }

    frames = iter(
        [
            detail("running", 10, "weight 10%"),
            detail("running", 10, "weight 10%"),
            detail("succeeded", 100, "rollout succeeded"),
        ]
    )
    final = _watch(lambda: next(frames), detail("pending", 0, "created"), False, 0)
    lines = capsys.readouterr().out.splitlines()
    assert final["state"] == "succeeded"
    assert lines == [
        "r-1 pending step=canary 10% weight=0% created",
        "r-1 running step=canary 10% weight=10% weight 10%",
        "r-1 succeeded step=canary 10% weight=100% rollout succeeded",
    ]


def test_a_rollouts_plan_is_validated_once_per_process_and_never_mixed_up(world) -> None:
    from types import SimpleNamespace

    from controller.stored_plans import plan_of

    runtime = world[0]
    rollout_id = start(runtime, make_plan(sustained="0s"))
    with runtime.sessions() as session:
        one = repository.get_rollout(session, rollout_id)
        assert plan_of(one) is plan_of(one)  # validated once, then kept
        assert plan_of(one) == Plan.from_data(one.plan)
    longer = make_plan(sustained="30s").model_dump(mode="json")
    other = SimpleNamespace(id="r-other", plan=longer)
    assert plan_of(other) == Plan.from_data(longer) != plan_of(one)
    # Rollouts started from one plan share its validated copy, whatever its key order.
    reordered = dict(reversed(list(one.plan.items())))
    same = SimpleNamespace(id="r-same-plan", plan=reordered)
    assert plan_of(same) is plan_of(one)
    assert plan_of(SimpleNamespace(id="r-other-2", plan=longer)) is plan_of(other)


def test_a_rollout_stored_before_patterns_were_re2_is_still_checked_and_rolled_back(
    world,
) -> None:
    """Its plan has a lookahead (Python's re took it; RE2 refuses it for new plans):
    after an upgrade its checks, its trip and its rollback still run."""
    runtime, metrics, router, clock, enqueued = world
    rollout_id = start(runtime, make_plan(sustained="0s"))
    with runtime.sessions() as session:
        stored = repository.get_rollout(session, rollout_id)
        stored.plan = {
            **stored.plan,
            "variables": {"team": "pay"},
            "overridable": {"team": "(?!admin)[a-z]+"},
        }
        session.commit()
    advance(runtime, rollout_id)
    metrics.errors = 200.0
    clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)
    assert enqueued == [rollout_id]
    assert rollback(runtime, rollout_id).state == "rolled_back" and router.weight == 0
