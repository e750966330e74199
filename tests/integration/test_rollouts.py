"""Rollouts end to end on the real stack: Celery workers on real Redis, the store on
real PostgreSQL, real Prometheus scraping the real demo service, real HAProxy.

Each test deploys its own canary version, so Prometheus series of one test never
mix with another's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from controller.lab.stack import RolloutLab
from controller.operations import abort_rollout, record_reconciliation, rollback_rollout
from controller.plan import Plan
from controller.runbook import find_incident
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import session_factory
from controller.store.models import Event, Rollout
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import (
    PLAN,
    assert_no_step_done_twice,
    at_canary,
    begin,
    deploy,
    finished,
    snapshot,
    start_lab,
    versions_served,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_postgres() -> Iterator[str]:
    """One PostgreSQL schema for the module's shared lab."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, shared_postgres: str) -> Iterator[RolloutLab]:
    """A lab with one rollouts worker, a rollback worker and beat, shared by the module."""
    lab = start_lab(tmp_path_factory.mktemp("rollouts"), shared_postgres)
    try:
        lab.start_controller()
        yield lab
    finally:
        lab.stop()


def test_healthy_canary_goes_to_100_and_succeeds(lab: RolloutLab) -> None:
    version = deploy(lab)
    rollout_id = begin(lab, version)
    rollout = wait_for(lab, rollout_id, finished)
    _, events = snapshot(lab, rollout_id)
    assert rollout.state == "succeeded", rollout.reason
    assert [e.data["weight"] for e in events if e.kind == "weight_set"] == [0, 10, 25, 50, 100]
    assert lab.router().get_canary_weight() == 100
    assert versions_served(lab) == {version}
    assert_no_step_done_twice(events)
    verdicts = {e.data["verdict"] for e in events if e.kind == "measurement"}
    assert "fail" not in verdicts and "error" not in verdicts
    # The workers ask the demo plan's criteria as batched queries (one for every
    # rollout), all of a criterion's queries or none, each saying when it was
    # evaluated (a check may still ask its own, when the slot's answer is not newer
    # than what the rollout judged or than its step's start).
    measured = [e.data for e in events if e.kind == "measurement" and e.data.get("queries")]
    batched = [m for m in measured if "batched" in m]
    assert batched and all(set(m["batched"]["roles"]) == set(m["queries"]) for m in batched)
    assert {m["criterion"] for m in batched} == {m["criterion"] for m in measured}


@pytest.mark.parametrize(
    ("criterion", "fault"),
    [
        ("http_5xx_vs_baseline", {"error_rate": 0.4}),
        ("auth_failures", {"auth_failure_rate": 0.2}),
        ("queue_lag_rising", {"queue_lag_growth": 2.0}),
        ("failed_writes", {"write_failure_rate": 0.1}),
    ],
)
def test_each_stop_criterion_rolls_back_to_stable(
    lab: RolloutLab, criterion: str, fault: dict[str, float]
) -> None:
    version = deploy(lab)
    rollout_id = begin(lab, version)
    wait_for(lab, rollout_id, at_canary)
    lab.set_faults("canary", **fault)
    rollout = wait_for(lab, rollout_id, finished)
    _, events = snapshot(lab, rollout_id)
    assert rollout.state == "rolled_back", rollout.reason
    assert rollout.tripped_criterion == criterion
    assert rollout.weight == 0 and lab.router().get_canary_weight() == 0
    assert versions_served(lab) == {rollout.stable_version}
    trip = next(e for e in events if e.kind == "decision" and e.data["decision"] == "rollback")
    assert trip.data["criterion"] == criterion and trip.data["value"] is not None
    failing = [e for e in events if e.kind == "measurement" and e.data["verdict"] == "fail"]
    assert failing and all(e.data["criterion"] == criterion for e in failing)
    assert "{{" not in str(failing[0].data["queries"]) and version in str(failing[0].data)
    assert_no_step_done_twice(events)


def test_after_a_failed_writes_rollback_the_next_rollout_waits_for_reconcile_done(
    lab: RolloutLab,
) -> None:
    """Release checklist §3.3: the data a failed-writes rollback left must be
    reconciled before the service's next rollout moves traffic; `canary reconcile-done`
    (the real command, on the store directly) records who did it and lets it go."""
    sessions = session_factory(lab.database_url)
    with sessions() as session:  # an earlier test may have left one pending
        if repository.reconciliation_pending(session, lab.settings.service) is not None:
            record_reconciliation(
                session, lab.settings.service, note="earlier test", actor="pytest", now=utcnow()
            )
    version = deploy(lab)
    failed = begin(lab, version)
    wait_for(lab, failed, at_canary)
    lab.set_faults("canary", write_failure_rate=0.1)
    try:
        rollout = wait_for(lab, failed, finished)
    finally:
        lab.set_faults("canary")
    assert (rollout.state, rollout.tripped_criterion) == ("rolled_back", "failed_writes")

    following = begin(lab, deploy(lab))
    rollout = wait_for(lab, following, lambda r, _e: r.state == "blocked", timeout=60)
    assert "writes-reconciled" in rollout.reason and "canary reconcile-done" in rollout.reason
    time.sleep(3)  # and it stays there, with no traffic moved
    rollout, _ = snapshot(lab, following)
    assert rollout.state == "blocked" and not rollout.weight
    assert lab.router().get_canary_weight() == 0

    done = subprocess.run(
        [sys.executable, "-m", "controller", "reconcile-done", lab.settings.service]
        + ["--note", "replayed 12 failed orders from the dead-letter queue"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CANARY_DATABASE_URL": lab.database_url},
    )
    assert done.returncode == 0, done.stderr
    assert "may go" in done.stdout
    wait_for(lab, following, at_canary, timeout=60)
    _, events = snapshot(lab, failed)
    (audit,) = [e for e in events if e.kind == "reconciliation_done"]
    assert audit.data["note"] == "replayed 12 failed orders from the dead-letter queue"
    assert audit.actor == audit.data["by"] and audit.actor  # the OS user, said so
    with sessions() as session:
        abort_rollout(session, following, reason="test done", actor="pytest", now=utcnow())
    wait_for(lab, following, finished)


class HeldCheck:
    """An HTTP endpoint a runbook check waits on until the test lets it answer."""

    def __init__(self) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()
        arrived, release = self.arrived, self.release

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                arrived.set()
                release.wait(25)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hold"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def runbook_done(_rollout: Rollout, events: list[Event]) -> bool:
    return any(e.kind == "runbook" and e.data["step"] == 5 for e in events)


def test_a_runbook_overtaken_by_the_next_rollout_leaves_its_canary_alone(lab: RolloutLab) -> None:
    """A rolled-back rollout's runbook is held in its smoke check (step 3) while the
    operator deploys the next version into the same canary slot and starts its
    rollout. When the check answers, the runbook sees the newer rollout before step
    4 and stops: the disable hook (POST /admin/disable on the canary slot) never
    reaches the new canary, and no incident is opened for the old one."""
    held, newer = HeldCheck(), None
    sessions = session_factory(lab.database_url)
    with sessions() as session:  # an earlier test's failed-writes rollback blocks starts
        if repository.reconciliation_pending(session, lab.settings.service) is not None:
            record_reconciliation(
                session, lab.settings.service, note="test", actor="pytest", now=utcnow()
            )
    try:
        data = PLAN.model_dump(mode="json")
        data["runbook"]["smoke_checks"] = [{"name": "held", "url": held.url, "timeout": "30s"}]
        version = deploy(lab)
        rollout_id = begin(lab, version, plan=Plan.from_data(data))
        wait_for(lab, rollout_id, at_canary)
        with sessions() as session:
            assert rollback_rollout(
                session, rollout_id, reason="bad smell", actor="pytest", now=utcnow()
            ).accepted
        assert held.arrived.wait(90), "the runbook never reached its smoke check"
        rollout, _ = snapshot(lab, rollout_id)
        assert rollout.state == "rolled_back" and lab.router().get_canary_weight() == 0

        next_version = deploy(lab)  # into the slot the old runbook would disable
        newer = begin(lab, next_version)
        held.release.set()
        wait_for(lab, rollout_id, runbook_done, timeout=60)
        _, events = snapshot(lab, rollout_id)
        steps = {e.data["step"]: e.data for e in events if e.kind == "runbook"}
        assert steps[3]["ok"] and not steps[3].get("skipped"), steps[3]
        reason = f"a newer rollout of {lab.settings.service} ({newer}) started since"
        for number in (4, 5):
            assert steps[number].get("not_run") == reason, steps[number]
        canary = lab.instance("canary")
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(f"{canary.url}/healthz").status_code == 200
            assert client.get(f"{canary.url}/version").json()["version"] == next_version
        with sessions() as session:
            assert find_incident(session, rollout_id) is None
    finally:
        held.close()
        if newer is not None:
            # Leave the lab idle for the next test: the newer rollout aborted, and its
            # own runbook (which disables its own canary) done.
            with sessions() as session:
                abort_rollout(session, newer, reason="test over", actor="pytest", now=utcnow())
            wait_for(lab, newer, finished)
            wait_for(lab, newer, runbook_done, timeout=90)
