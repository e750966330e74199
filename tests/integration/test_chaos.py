"""The chaos scenario, short: 8 rollouts (half of them faulty canaries) while a
worker is SIGKILLed, Redis restarts with nothing persisted, PostgreSQL restarts and
Prometheus stops for 10 s. Nothing lost, every verdict right, no step twice, no
rollback recorded before HAProxy showed it, every runbook run once.

``bench/chaos.py`` runs the full scenario (50 rollouts) and prints its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.lab.chaos import SHORT, run_chaos
from controller.lab.controllers import LabSettings
from controller.lab.errors import MissingBinaryError
from controller.lab.fleet import FleetLab

pytestmark = pytest.mark.integration


def test_no_rollback_lost_while_workers_redis_postgres_and_prometheus_fail(
    tmp_path: Path,
) -> None:
    settings = LabSettings(
        reconcile_interval_seconds=1.0, lease_seconds=37.0, task_time_limit_seconds=36.0
    )
    try:
        lab = FleetLab(tmp_path, SHORT.services(), settings).start()
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        report = run_chaos(lab, SHORT, say=print)
    finally:
        lab.stop()
    assert len(report.actions) >= 5, report.actions  # every fault really happened
    assert report.clean, "\n".join([report.line(), *report.problems])
    faulty = sum(1 for s in SHORT.services() if s.faulty)
    assert len(report.rollback_seconds) == faulty
    assert report.max_rollback_s < 60, report.line()
