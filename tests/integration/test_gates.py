"""Go/no-go gates, approvals, the staging soak, post-deploy verification and
lifecycle notifications, on the real stack (Celery workers, PostgreSQL, Redis,
Prometheus, HAProxy and the demo service)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import budget
from controller.lab.stack import RolloutLab
from controller.operations import (
    OperationError,
    abort_rollout,
    approve_rollout,
    recheck_rollout,
    start_rollout,
)
from controller.plan import Plan
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import session_factory
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import (
    PLAN,
    at_canary,
    begin,
    deploy,
    finished,
    snapshot,
    start_lab,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutLab]:
    with postgres_schema() as url:
        lab = start_lab(tmp_path_factory.mktemp("gates"), url)
        try:
            lab.start_controller()
            yield lab
        finally:
            lab.stop()


@pytest.fixture(autouse=True)
def no_rollout_left_behind(lab: RolloutLab) -> Iterator[None]:
    """A failed test must not leave an active rollout that blocks the next one."""
    yield
    with session_factory(lab.database_url)() as session:
        active = repository.list_rollouts(session, active_only=True, service=lab.settings.service)
        for rollout in active:
            abort_rollout(session, rollout.id, reason="test cleanup", actor="pytest", now=utcnow())
    for rollout in active:
        wait_for(lab, rollout.id, finished)


def variant(**changes: object) -> Plan:
    """The demo plan with some top-level sections replaced."""
    data = PLAN.model_dump(mode="json")
    for key, value in changes.items():
        if key == "gates":
            data["gates"].update(value)  # type: ignore[arg-type]
        else:
            data[key] = value
    return Plan.from_data(data)


def blocked_on(text: str):  # noqa: ANN201
    def check(rollout, _events) -> bool:  # noqa: ANN001
        return rollout.state == "blocked" and text in (rollout.reason or "")

    return check


def test_a_failing_gate_blocks_with_its_reason_and_passes_once_fixed(
    lab: RolloutLab, tmp_path: Path
) -> None:
    flag = tmp_path / "ci-green"
    plan = variant(
        gates={
            "commands": [
                {"name": "ci-green", "command": ["test", "-f", str(flag)], "timeout": "10s"}
            ]
        }
    )
    rollout_id = begin(lab, deploy(lab), plan=plan)
    # Other gates may fail for a moment while the new version's targets come up.
    rollout = wait_for(
        lab, rollout_id, blocked_on("preflight gates failing: ci-green: exit 1"), timeout=30
    )
    assert rollout.weight is None  # no traffic moved
    _, events = snapshot(lab, rollout_id)
    blocked = [e for e in events if e.kind == "blocked"][-1]
    results = {c["name"]: c for c in blocked.data["checks"]}
    assert results["ci-green"]["ok"] is False
    assert results["prometheus-targets"]["ok"] and results["stable-health"]["ok"]
    assert results["no-firing-alerts"]["ok"]
    shown = subprocess.run(
        [sys.executable, "-m", "controller", "status", rollout_id, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **lab.env()},
    )
    detail = json.loads(shown.stdout)
    assert detail["state"] == "blocked" and "ci-green" in detail["reason"]
    assert {g["name"]: g["ok"] for g in detail["gates"]}["ci-green"] is False

    flag.write_text("green\n")
    with session_factory(lab.database_url)() as session:
        assert recheck_rollout(session, rollout_id, actor="pytest", now=utcnow()).accepted
    wait_for(lab, rollout_id, lambda r, e: any(x.kind == "gates_passed" for x in e), timeout=20)
    wait_for(lab, rollout_id, at_canary)
    with session_factory(lab.database_url)() as session:
        abort_rollout(session, rollout_id, reason="test done", actor="pytest", now=utcnow())
    assert wait_for(lab, rollout_id, finished).state == "aborted"


def test_approvals_unblock_and_verification_marks_the_release_stable(lab: RolloutLab) -> None:
    version = deploy(lab)
    rollout_id = begin(lab, version, approve=False)
    wait_for(lab, rollout_id, blocked_on("awaiting approval by release_manager"), timeout=30)
    sessions = session_factory(lab.database_url)
    with sessions() as session:
        with pytest.raises(OperationError, match="'mallory' cannot approve preflight"):
            approve_rollout(session, rollout_id, name="mallory", now=utcnow())
        approve_rollout(session, rollout_id, name="alice", now=utcnow())
    rollout = wait_for(
        lab,
        rollout_id,
        lambda r, _e: r.state == "blocked" and "release_manager" not in r.reason,
        timeout=30,
    )
    assert "awaiting approval by security_approver" in rollout.reason
    with sessions() as session:
        approve_rollout(session, rollout_id, name="dave", now=utcnow())

    rollout = wait_for(lab, rollout_id, blocked_on("ramp awaits approval by sre_oncall"))
    assert rollout.weight == 10  # a gate before a stage keeps traffic where it is
    with sessions() as session:
        outcome = approve_rollout(session, rollout_id, name="carol", now=utcnow())
    assert outcome.accepted and "sre_oncall" in outcome.message
    rollout = wait_for(lab, rollout_id, finished)
    assert rollout.state == "succeeded", rollout.reason

    _, events = snapshot(lab, rollout_id)
    approvals = [(e.data["gate"], e.data["name"]) for e in events if e.kind == "approval"]
    assert approvals == [("preflight", "alice"), ("preflight", "dave"), ("ramp", "carol")]
    smoke = [e for e in events if e.kind == "smoke"]
    assert [e.data["ok"] for e in smoke] == [True, True]  # soak and verify
    assert {c["kind"] for e in smoke for c in e.data["checks"]} == {"http", "command"}
    verification = [e for e in events if e.kind == "verification"][-1]
    assert {c["name"]: c["ok"] for c in verification.data["checks"]} == {
        "alerts-quiet": True,
        "backlog": True,
    }
    assert any(e.kind == "release_stable" for e in events)
    assert rollout.analysis["soak_load"]["sent"] > 0
    assert rollout.analysis["soak_load"]["errors"] == 0

    # The verification recorded the release (not merely a succeeded rollout) ...
    with sessions() as session:
        release = repository.stable_release(session, lab.settings.service)
        assert release is not None
        assert (release.stable_version, release.rollout_id) == (version, rollout_id)
    # ... and the next rollout of the service takes it as its baseline.
    with sessions() as session:
        following = start_rollout(
            session,
            PLAN,
            service=lab.settings.service,
            version="9.0.0",
            stable=None,
            created_by="pytest",
            now=utcnow(),
            router_for=lab.router_for,
            variables=lab.plan_variables(),
        )
        assert following.stable_version == version
        abort_rollout(session, following.id, reason="test done", actor="pytest", now=utcnow())
    wait_for(lab, following.id, finished)


def test_soak_fails_a_broken_build_before_any_traffic(lab: RolloutLab) -> None:
    version = deploy(lab)
    lab.set_faults("staging", error_rate=1.0)
    try:
        rollout_id = begin(lab, version)
        rollout = wait_for(lab, rollout_id, finished)
    finally:
        lab.set_faults("staging")
    assert rollout.state == "rolled_back"
    assert rollout.analysis["trigger"]["kind"] == "smoke"
    assert "staging-soak" in rollout.reason and "staging-checkout" in rollout.reason
    _, events = snapshot(lab, rollout_id)
    assert {e.data["weight"] for e in events if e.kind == "weight_set"} == {0}


def test_a_smoke_suite_longer_than_one_advance_runs_over_several_before_the_canary(
    lab: RolloutLab,
) -> None:
    """Real commands on a real worker: a suite whose checks do not fit in one task's
    time budget is spread over advances, and no canary traffic moves before all of it
    has passed."""
    data = PLAN.model_dump(mode="json")
    soak = next(s for s in data["stages"] if s["name"] == "staging-soak")
    probe = soak["smoke"]["commands"][0]
    soak["smoke"]["commands"] = [{**probe, "name": f"suite-{i}"} for i in (1, 2, 3)]
    plan = Plan.from_data(data)
    allowance = budget.smoke_allowance(plan, plan.steps()[0])
    for command in soak["smoke"]["commands"]:
        command["timeout"] = f"{int(allowance // 2) + 1}s"  # one command per advance
    plan = Plan.from_data(data)
    assert budget.budget_problems(plan) == []

    rollout_id = begin(lab, deploy(lab), plan=plan)
    wait_for(lab, rollout_id, at_canary)
    _, events = snapshot(lab, rollout_id)
    smoke = [e for e in events if e.kind == "smoke"]
    assert [(e.data["complete"], e.data["ok"]) for e in smoke] == [
        (False, True),
        (False, True),
        (True, True),
    ]
    assert [c["name"] for c in smoke[-1].data["checks"]] == [
        "staging-checkout",
        "suite-1",
        "suite-2",
        "suite-3",
    ]
    canary = next(e for e in events if e.kind == "weight_set" and e.data.get("kind") == "canary")
    assert canary.at >= smoke[-1].at and canary.id > smoke[-1].id


class Blackhole:
    """A TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_a_notification_endpoint_that_is_down_does_not_slow_a_rollback(lab: RolloutLab) -> None:
    hole = Blackhole()
    try:
        plan = variant(
            notifications=[
                {
                    "name": "hook",
                    "kind": "webhook",
                    "url": f"http://127.0.0.1:{hole.port}/",
                    "timeout_seconds": 3,
                }
            ]
        )
        rollout_id = begin(lab, deploy(lab), plan=plan)
        wait_for(lab, rollout_id, at_canary)
        lab.set_faults("canary", write_failure_rate=0.5)
        rollout = wait_for(lab, rollout_id, finished)
        assert rollout.state == "rolled_back"
        _, events = snapshot(lab, rollout_id)
        requested = next(e.at for e in events if e.kind == "rollback_requested")
        shifted = next(e.at for e in events if e.kind == "weight_set" and e.data.get("rollback"))
        assert (shifted - requested).total_seconds() < 1.5

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, events = snapshot(lab, rollout_id)
            sent = {e.data["kind"]: e for e in events if e.kind == "notification"}
            if "rolled_back" in sent:
                break
            time.sleep(0.5)
        assert {"started", "rolled_back"} <= set(sent)
        assert all(not o["ok"] for e in sent.values() for o in e.data["outcomes"])
        assert "no answer" in sent["rolled_back"].data["outcomes"][0]["detail"]
    finally:
        hole.close()
