"""Rollouts when parts fail: Prometheus stops mid-canary, a worker is killed with
SIGKILL mid-rollout. Each test has a lab of its own, since it breaks it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.store import repository
from controller.store.db import session_factory
from tests.integration.rollout_helpers import (
    PLAN,
    assert_no_step_done_twice,
    at_canary,
    begin,
    deploy,
    finished,
    snapshot,
    start_lab,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_prometheus_stopped_mid_canary_never_promotes(tmp_path: Path, postgres_url: str) -> None:
    lab = start_lab(tmp_path, postgres_url)
    try:
        lab.start_controller()
        version = deploy(lab)
        rollout_id = begin(lab, version)
        wait_for(lab, rollout_id, at_canary)
        assert lab.prometheus is not None
        lab.prometheus.stop()
        rollout = wait_for(lab, rollout_id, lambda r, _e: r.state != "running", timeout=60)
        assert rollout.state == "paused" and "ended in an error" in rollout.reason
        assert "Prometheus" in rollout.reason
        time.sleep(3)  # and it stays there: nothing promotes a paused rollout
        rollout, events = snapshot(lab, rollout_id)
        assert rollout.state == "paused" and rollout.weight == 10
        assert lab.router().get_canary_weight() == 10
        criteria = {
            c.name for c in PLAN.stop_criteria
        }  # the slot version check needs no Prometheus
        after_stop = [
            e for e in events if e.kind == "measurement" and e.data["criterion"] in criteria
        ][-5:]
        assert {e.data["verdict"] for e in after_stop} == {"error"}
        promoted = [e for e in events if e.kind == "step_completed" and e.step_index >= 1]
        assert promoted == []
    finally:
        lab.stop()


def test_worker_killed_mid_rollout_another_finishes(tmp_path: Path, postgres_url: str) -> None:
    # The shortest time limit whose soft limit still leaves room for the checks of one
    # advance (config.settings), and a lease just above it: the killed worker's lease
    # expires as soon as the settings allow.
    lab = start_lab(tmp_path, postgres_url, lease_seconds=37.0, task_time_limit_seconds=36.0)
    try:
        first = lab.start_worker("first", "rollouts", concurrency=1)
        lab.start_worker("rollback", "rollback,reconcile", concurrency=1)
        lab.start_beat()
        version = deploy(lab)
        rollout_id = begin(lab, version)
        wait_for(lab, rollout_id, at_canary)
        sessions = session_factory(lab.database_url)
        deadline = time.monotonic() + 20
        held = False
        while time.monotonic() < deadline and not held:  # kill it while it holds the lease
            with sessions() as session:
                held = repository.get_rollout(session, rollout_id).lease_owner is not None
        first.kill()
        assert held, "the first worker never held the rollout's lease"
        lab.start_worker("second", "rollouts", concurrency=1)
        rollout = wait_for(lab, rollout_id, finished, timeout=150)
        _, events = snapshot(lab, rollout_id)
        assert rollout.state == "succeeded", rollout.reason
        assert [e.data["weight"] for e in events if e.kind == "weight_set"] == [0, 10, 25, 50, 100]
        assert_no_step_done_twice(events)
        # As a supervisor would, the lab starts again what exited (and only that).
        [revived] = lab.revive_exited()
        assert revived.startswith("first exited on its own (code -9"), revived
        assert lab.workers["first"].alive and lab.revive_exited() == []
    finally:
        lab.stop()
