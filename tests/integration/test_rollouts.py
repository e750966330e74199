"""Rollouts end to end on the real stack: Celery workers on real Redis, the store on
real PostgreSQL, real Prometheus scraping the real demo service, real HAProxy.

Each test deploys its own canary version, so Prometheus series of one test never
mix with another's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.lab.stack import RolloutLab
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import (
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
    # rollout), all of a criterion's queries or none (a step's first check asks its
    # own: no shared answer from before its weight), each saying when it was evaluated.
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
