"""``/metrics`` from what the store keeps up to date (measurement totals, each
rollout's last measurements, its time to stable), agreeing with the event log it
no longer scans."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import select

from controller.engine import advance
from controller.operations import pause_rollout
from controller.plan import Plan
from controller.rollback import rollback
from controller.runtime import utcnow
from controller.store import repository, totals
from controller.store.models import MeasurementTotal
from controller.telemetry import StoreCollector
from tests.unit.test_state_machine import make_plan, run_until_settled, start


def samples(runtime, name: str) -> dict[tuple, float]:  # type: ignore[no-untyped-def]
    found = {}
    for family in StoreCollector(runtime.sessions).collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def add_measurement(session, rollout_id: str, criterion: str, verdict: str) -> None:  # type: ignore[no-untyped-def]
    repository.append_event(
        session,
        rollout_id,
        "measurement",
        actor="t",
        at=utcnow(),
        message="m",
        data={"criterion": criterion, "verdict": verdict},
    )


def test_measurement_totals_match_the_events(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    run_until_settled(runtime, clock, rollout_id)
    with runtime.sessions() as session:
        events = repository.events_for(session, rollout_id, ["measurement"])
        expected = Counter((e.data["criterion"], e.data["verdict"]) for e in events)
    got = samples(runtime, "canary_measurements_total")
    assert expected and {
        (dict(k)["criterion"], dict(k)["verdict"]): v for k, v in got.items()
    } == dict(expected)


def test_measurements_rolled_back_are_not_counted(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        add_measurement(session, rollout_id, "ghost", "pass")
        session.rollback()
        session.commit()
    assert not [k for k in samples(runtime, "canary_measurements_total") if "ghost" in str(k)]


def test_measurements_of_several_worker_processes_are_summed(world, monkeypatch) -> None:
    """Each process adds to its own shard of the totals; /metrics reports their sum."""
    runtime, _, _, _, _ = world
    rollout_id = start(runtime, make_plan())

    def measure_from(pid: int, verdicts: list[str]) -> None:
        monkeypatch.setattr(totals.os, "getpid", lambda: pid)
        with runtime.sessions() as session:
            for verdict in verdicts:
                add_measurement(session, rollout_id, "sharded", verdict)
            session.commit()

    measure_from(1, ["pass", "pass", "fail"])
    measure_from(2, ["pass"])
    measure_from(17, ["pass"])  # the same shard as pid 1
    with runtime.sessions() as session:
        shards = session.execute(
            select(MeasurementTotal.shard, MeasurementTotal.count).where(
                MeasurementTotal.criterion == "sharded", MeasurementTotal.verdict == "pass"
            )
        ).all()
    assert sorted(shards) == [(1, 3), (2, 1)]
    got = {
        dict(k)["verdict"]: v
        for k, v in samples(runtime, "canary_measurements_total").items()
        if dict(k)["criterion"] == "sharded"
    }
    assert got == {"pass": 4, "fail": 1}


def test_last_values_and_rollbacks_come_from_the_rollouts(world) -> None:
    runtime, metrics, _, clock, enqueued = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    values = samples(runtime, "canary_criterion_value")
    assert [dict(k)["rollout_id"] for k in values] == [rollout_id]
    with runtime.sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        repository.request_rollback(
            session,
            rollout_id,
            now=clock(),
            actor="alertmanager",
            reason="alert fired",
            tripped=None,
            trigger={"kind": "alert", "alertname": "X", "labels": {}, "fingerprint": "f"},
        )
        assert rollout is not None
    clock.now += timedelta(seconds=2)
    rollback(runtime, rollout_id)
    reasons = samples(runtime, "canary_rollbacks")
    assert [dict(k)["trigger"] for k in reasons] == ["alert"]
    assert samples(runtime, "canary_alert_to_rollback_seconds_count") == {(): 1.0}
    assert samples(runtime, "canary_alert_to_rollback_seconds_sum") == {(): 2.0}


def test_prune_summarises_old_measurements_and_keeps_the_audit_trail(world) -> None:
    from controller.retention import prune_measurements

    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    run_until_settled(runtime, clock, rollout_id)
    totals_before = samples(runtime, "canary_measurements_total")
    with runtime.sessions() as session:
        before = repository.events_for(session, rollout_id)
        measured = [e for e in before if e.kind == "measurement"]
        kept = [e.id for e in before if e.kind != "measurement"]
        assert measured
        recent = prune_measurements(session, timedelta(days=90), clock.now)
        assert (recent.rollouts, recent.events) == (0, 0)  # finished just now: kept
        later = clock.now + timedelta(days=91)
        dry = prune_measurements(session, timedelta(days=90), later, dry_run=True)
        assert (dry.rollouts, dry.events) == (1, len(measured))
        assert len(repository.events_for(session, rollout_id)) == len(before)
        done = prune_measurements(session, timedelta(days=90), later)
        assert (done.rollouts, done.events) == (1, len(measured))
        after = repository.events_for(session, rollout_id)
    assert [e.id for e in after if e.kind != "measurements_pruned"] == kept
    [summary] = [e for e in after if e.kind == "measurements_pruned"]
    assert summary.data["count"] == len(measured)
    assert sum(summary.data["by_criterion_and_verdict"].values()) == len(measured)
    assert samples(runtime, "canary_measurements_total") == totals_before  # a counter


def test_a_canary_held_with_traffic_exports_its_wait_and_its_plans_deadline(world) -> None:
    """The CanaryRolloutHeldWithTraffic alert compares these two: each rollout against
    its own plan's progress_deadline, not one fixed hour for every plan."""
    runtime, _, _, clock, _ = world
    data = make_plan().model_dump(mode="json")
    data["analysis"]["progress_deadline"] = "10m"
    rollout_id = start(runtime, Plan.from_data(data))
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        pause_rollout(session, rollout_id, reason="investigating", actor="bob", now=clock.now)
    for _ in range(3):
        clock.now += timedelta(seconds=5)
        advance(runtime, rollout_id)
    labels = (("rollout_id", rollout_id), ("service", "api"))
    assert samples(runtime, "canary_rollout_progress_deadline_seconds") == {labels: 600.0}
    (waited,) = samples(runtime, "canary_rollout_waiting_seconds").values()
    assert waited > 0
