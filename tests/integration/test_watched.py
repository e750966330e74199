"""Every canary with traffic is watched, and the router is the truth, on the real
stack (HAProxy with two slots, Celery workers on real Redis, PostgreSQL, Prometheus
scraping the real demo service):

* a slot that serves another version than the one recorded is an error, never a pass;
* a canary held with traffic past the plan's progress deadline is rolled back when the
  plan says so;
* a careless HAProxy reload under ``on_drift: rollback`` rolls the canary back;
* people pausing and resuming while advances are in flight are never told to try
  again, and the store ends up saying what the router carries.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.lab.stack import RolloutLab
from controller.operations import abort_rollout, pause_rollout, resume_rollout
from controller.plan import Plan
from controller.runtime import utcnow
from controller.store.db import session_factory
from controller.store.models import Event, Rollout
from tests.integration.rollout_helpers import (
    PLAN,
    at_canary,
    begin,
    controller_lab,
    deploy,
    finished,
    snapshot,
    versions_served,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutLab]:
    with controller_lab(tmp_path_factory.mktemp("watched"), lazy_error_series=True) as lab:
        yield lab


def plan_with(**analysis: Any) -> Plan:
    data = PLAN.model_dump(mode="json")
    data["analysis"].update(analysis)
    return Plan.from_data(data)


def abort(lab: RolloutLab, rollout_id: str) -> Rollout:
    with session_factory(lab.database_url)() as session:
        abort_rollout(session, rollout_id, reason="test done", actor="pytest", now=utcnow())
    return wait_for(lab, rollout_id, finished)


def forward_weights(events: list[Event], after: Any) -> list[int]:
    return [
        e.data["weight"]
        for e in events
        if e.kind == "weight_set" and not e.data.get("rollback") and e.at > after
    ]


def test_a_canary_slot_serving_another_version_is_an_error_never_a_pass(lab: RolloutLab) -> None:
    version = deploy(lab)
    rollout_id = begin(lab, version)
    wait_for(lab, rollout_id, at_canary)
    weight = lab.router().get_canary_weight()
    lab.redeploy("canary", "6.6.6")  # someone deployed over the canary slot mid-rollout
    replaced_at = utcnow()
    try:
        rollout = wait_for(lab, rollout_id, lambda r, ev: r.state == "paused", timeout=120)
        _, events = snapshot(lab, rollout_id)
        checks = [
            e
            for e in events
            if e.kind == "measurement" and e.data.get("criterion") == "slot_versions"
        ]
        wrong = [e for e in checks if e.at > replaced_at and e.data["verdict"] == "error"]
        assert wrong, [e.message for e in checks[-3:]]
        assert "6.6.6" in wrong[-1].message and version in wrong[-1].message
        assert not [e for e in checks if e.at > replaced_at and e.data["verdict"] == "pass"]
        # Never promoted on it: the limit policy paused it where it stood.
        assert forward_weights(events, replaced_at) in ([], [weight]), events[-5:]
        assert rollout.weight == lab.router().get_canary_weight() > 0
        assert "checks in a row ended in an error (last: slot_versions: " in rollout.reason
    finally:
        abort(lab, rollout_id)
    assert lab.router().get_canary_weight() == 0


def test_a_canary_held_past_its_progress_deadline_is_rolled_back(lab: RolloutLab) -> None:
    plan = plan_with(progress_deadline="3s", on_progress_deadline="rollback")
    version = deploy(lab)
    rollout_id = begin(lab, version, plan=plan)
    wait_for(lab, rollout_id, at_canary)
    with session_factory(lab.database_url)() as session:
        outcome = pause_rollout(
            session, rollout_id, reason="out for lunch", actor="pytest", now=utcnow()
        )
    assert outcome.accepted, outcome.message
    paused_at = utcnow()
    rollout = wait_for(lab, rollout_id, finished, timeout=60)
    assert rollout.state == "rolled_back", rollout.reason
    _, events = snapshot(lab, rollout_id)
    deadline = next(e for e in events if e.kind == "progress_deadline")
    assert deadline.data["policy"] == "rollback" and deadline.data["waited_seconds"] >= 3
    assert (deadline.at - paused_at).total_seconds() >= 3
    assert lab.router().get_canary_weight() == 0
    assert versions_served(lab) == {rollout.stable_version}


def test_a_careless_reload_under_on_drift_rollback_rolls_the_canary_back(lab: RolloutLab) -> None:
    assert lab.haproxy is not None
    plan = plan_with(on_drift="rollback")
    version = deploy(lab)
    rollout_id = begin(lab, version, plan=plan)
    wait_for(lab, rollout_id, at_canary)
    lab.haproxy.reload(keep_state=False)  # weights back to the config's: canary 0
    rollout = wait_for(lab, rollout_id, finished, timeout=60)
    assert rollout.state == "rolled_back", rollout.reason
    _, events = snapshot(lab, rollout_id)
    drift = next(e for e in events if e.kind == "drift")
    assert drift.data["policy"] == "rollback" and drift.data["actual"] == 0
    assert not [e for e in events if e.kind == "weight_set" and e.data.get("reasserted")]
    assert lab.router().get_canary_weight() == 0


def test_people_acting_during_advances_are_never_told_to_try_again(lab: RolloutLab) -> None:
    """Pause and resume at random moments while the canary advances every second: each
    is applied at once, and a paused rollout's recorded weight is what HAProxy carries
    (an advance that moved the router and then lost its commit records it)."""
    version = deploy(lab)
    rollout_id = begin(lab, version)
    wait_for(lab, rollout_id, at_canary)
    refused: list[str] = []
    disagreements: list[tuple[int, int]] = []
    try:
        for attempt in range(12):
            with session_factory(lab.database_url)() as session:
                paused = pause_rollout(
                    session, rollout_id, reason=f"look {attempt}", actor="pytest", now=utcnow()
                )
            if not paused.accepted:
                refused.append(paused.message)
                if "finished" in paused.message or "succeeded" in paused.message:
                    break
                continue
            # Paused: within an interval or two the store and the router agree.
            agreed = _store_and_router_agree(lab, rollout_id, within=5)
            if agreed is not None:
                disagreements.append(agreed)
            with session_factory(lab.database_url)() as session:
                resumed = resume_rollout(session, rollout_id, actor="pytest", now=utcnow())
            if not resumed.accepted:
                refused.append(resumed.message)
            time.sleep(0.3 + (attempt % 4) * 0.25)  # land at different points of a step
            rollout, _ = snapshot(lab, rollout_id)
            if rollout.state not in ("running", "paused"):
                break
    finally:
        rollout, _ = snapshot(lab, rollout_id)
        if rollout.state not in ("succeeded", "rolled_back", "aborted"):
            abort(lab, rollout_id)
    assert not [m for m in refused if "ask again" in m or "try again" in m], refused
    assert not disagreements, disagreements


def _store_and_router_agree(
    lab: RolloutLab, rollout_id: str, within: float
) -> tuple[int, int] | None:
    """None once the paused rollout's recorded weight is the router's; else both."""
    deadline = time.monotonic() + within
    while True:
        rollout, _ = snapshot(lab, rollout_id)
        actual = lab.router().get_canary_weight()
        if rollout.weight == actual:
            return None
        if time.monotonic() > deadline:
            return (rollout.weight, actual)
        time.sleep(0.2)
