"""Rollouts end to end on the real stack: Celery workers on real Redis, the store on
real PostgreSQL, real Prometheus scraping the real demo service, real HAProxy.

Each test deploys its own canary version, so Prometheus series of one test never
mix with another's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from config import PLANS_DIR
from controller.lab.errors import MissingBinaryError
from controller.lab.stack import LabSettings, RolloutLab
from controller.operations import start_rollout
from controller.plan_loader import load_plan
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import migrate, session_factory
from controller.store.models import FINAL_STATES, Event, Rollout
from tests.conftest import postgres_schema

pytestmark = pytest.mark.integration

PLAN = load_plan(PLANS_DIR / "demo.yaml")
STABLE = "1.0.0"
_versions = itertools.count(1)


def start_lab(workdir: Path, database_url: str, **overrides: object) -> RolloutLab:
    settings = LabSettings(
        database_url=database_url, stable_version=STABLE, canary_version="0.9.0", **overrides
    )
    try:
        lab = RolloutLab(workdir, settings).start()
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    migrate(database_url)
    return lab


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


def deploy(lab: RolloutLab) -> str:
    """A new canary version in staging and in the canary slot, faults off."""
    version = f"2.0.{next(_versions)}"
    lab.deploy_canary(version)
    lab.router().set_canary_weight(0)
    return version


def begin(lab: RolloutLab, version: str) -> str:
    with session_factory(lab.database_url)() as session:
        return start_rollout(
            session,
            PLAN,
            service=lab.settings.service,
            version=version,
            stable=STABLE,
            created_by="pytest",
            now=utcnow(),
        ).id


def snapshot(lab: RolloutLab, rollout_id: str) -> tuple[Rollout, list[Event]]:
    with session_factory(lab.database_url)() as session:
        rollout = repository.get_rollout(session, rollout_id)
        return rollout, list(repository.events_for(session, rollout_id))


def wait_for(
    lab: RolloutLab,
    rollout_id: str,
    condition: Callable[[Rollout, list[Event]], bool],
    timeout: float = 90,
) -> Rollout:
    deadline = time.monotonic() + timeout
    while True:
        rollout, events = snapshot(lab, rollout_id)
        if condition(rollout, events):
            return rollout
        if time.monotonic() > deadline:
            kinds = [f"{e.kind}: {e.message}" for e in events[-8:]]
            raise AssertionError(f"rollout {rollout_id} stuck in {rollout.state}: {kinds}")
        time.sleep(0.2)


def finished(rollout: Rollout, _events: list[Event]) -> bool:
    return rollout.state in FINAL_STATES


def at_canary(rollout: Rollout, events: list[Event]) -> bool:
    return any(e.kind == "weight_set" and e.data.get("kind") == "canary" for e in events)


def versions_served(lab: RolloutLab, requests: int = 60) -> set[str]:
    """Which versions answer real requests through HAProxy right now."""
    assert lab.haproxy is not None
    seen = set()
    with httpx.Client(trust_env=False, timeout=5) as client:
        for _ in range(requests):
            seen.add(client.get(f"{lab.haproxy.url}/checkout").json()["version"])
    return seen


def assert_no_step_done_twice(events: list[Event]) -> None:
    weights = [e.data["weight"] for e in events if e.kind == "weight_set"]
    completed = [e.step_index for e in events if e.kind == "step_completed"]
    assert len(completed) == len(set(completed)), completed
    assert weights == sorted(set(weights)) or weights[-1] == 0, weights


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
    assert versions_served(lab) == {STABLE}
    trip = next(e for e in events if e.kind == "decision" and e.data["decision"] == "rollback")
    assert trip.data["criterion"] == criterion and trip.data["value"] is not None
    failing = [e for e in events if e.kind == "measurement" and e.data["verdict"] == "fail"]
    assert failing and all(e.data["criterion"] == criterion for e in failing)
    assert "{{" not in str(failing[0].data["queries"]) and version in str(failing[0].data)
    assert_no_step_done_twice(events)


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
        assert rollout.state == "paused" and "could not reach Prometheus" in rollout.reason
        time.sleep(3)  # and it stays there: nothing promotes a paused rollout
        rollout, events = snapshot(lab, rollout_id)
        assert rollout.state == "paused" and rollout.weight == 10
        assert lab.router().get_canary_weight() == 10
        after_stop = [e for e in events if e.kind == "measurement"][-5:]
        assert {e.data["verdict"] for e in after_stop} == {"error"}
        promoted = [e for e in events if e.kind == "step_completed" and e.step_index >= 1]
        assert promoted == []
    finally:
        lab.stop()


def test_worker_killed_mid_rollout_another_finishes(tmp_path: Path, postgres_url: str) -> None:
    lab = start_lab(tmp_path, postgres_url, lease_seconds=8.0, task_time_limit_seconds=6.0)
    try:
        first = lab.start_worker("first", "rollouts", concurrency=1)
        lab.start_worker("rollback", "rollback", concurrency=1)
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
        rollout = wait_for(lab, rollout_id, finished)
        _, events = snapshot(lab, rollout_id)
        assert rollout.state == "succeeded", rollout.reason
        assert [e.data["weight"] for e in events if e.kind == "weight_set"] == [0, 10, 25, 50, 100]
        assert_no_step_done_twice(events)
    finally:
        lab.stop()
