"""A service whose failure counter appears only with its first failure, judged by a
"any failed write" criterion without a total, on the real stack (the demo service
creating its error series lazily, Prometheus scraping it, Celery workers, HAProxy):

* healthy, the failure query returns no series at every check, and the rollout still
  reaches 100 %: the same check's 5xx criterion counted the canary's requests, so the
  absent series is 0 failures, and each measurement says so;
* its first failures create the series, and the criterion rolls the canary back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.lab.stack import RolloutLab
from controller.plan import Plan
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
    with controller_lab(tmp_path_factory.mktemp("absent"), lazy_error_series=True) as lab:
        yield lab


def any_failed_write_plan() -> Plan:
    """The demo plan with failed writes as a user writes them: no total. Its
    inconclusive_limit (15 checks) pauses a canary judged "no data" at every check."""
    data = PLAN.model_dump(mode="json")
    for criterion in data["stop_criteria"]:
        if criterion["name"] == "failed_writes":
            criterion.pop("total")
            criterion["min_requests"] = 1
    return Plan.from_data(data)


def failure_series(lab: RolloutLab, version: str) -> list:
    assert lab.prometheus is not None
    return lab.prometheus.query(f'demo_write_failures_total{{version="{version}"}}')


def test_a_healthy_canary_without_a_failure_series_reaches_100_percent(lab: RolloutLab) -> None:
    version = deploy(lab)
    rollout_id = begin(lab, version, plan=any_failed_write_plan())
    rollout = wait_for(lab, rollout_id, finished, timeout=180)
    assert rollout.state == "succeeded", rollout.reason
    assert failure_series(lab, version) == []  # absent at every check: the case under test

    _, events = snapshot(lab, rollout_id)
    writes = [
        e.data for e in events if e.kind == "measurement" and e.data["criterion"] == "failed_writes"
    ]
    passed = [w for w in writes if w["verdict"] == "pass"]
    assert passed and all(w["inputs"]["failures"] == 0 for w in passed), writes
    assert all("no failures series while " in w["reason"] for w in passed)
    assert any("http_5xx_vs_baseline's canary_total shows" in w["reason"] for w in passed)
    # Before the canary's first requests are counted (a step's first checks), it
    # holds, saying why; never a failure, never a pause.
    held = [w for w in writes if w["verdict"] != "pass"]
    assert all(w["verdict"] == "inconclusive" for w in held), held
    assert all("no criterion of this check counted canary requests" in w["reason"] for w in held)
    paused = [e.message for e in events if e.kind == "decision" and e.data["decision"] == "pause"]
    assert not paused


def test_its_first_failures_roll_the_canary_back(lab: RolloutLab) -> None:
    version = deploy(lab)
    rollout_id = begin(lab, version, plan=any_failed_write_plan())
    wait_for(lab, rollout_id, at_canary, timeout=120)
    lab.set_faults("canary", write_failure_rate=0.2)
    rollout = wait_for(lab, rollout_id, finished, timeout=120)
    assert rollout.state == "rolled_back", rollout.reason
    assert rollout.analysis["trigger"]["criterion"] == "failed_writes"
    assert failure_series(lab, version) != []
    assert versions_served(lab) == {lab.instance("stable").version}
    lab.set_faults("canary")
