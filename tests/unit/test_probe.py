"""The containers' healthchecks judge what they read: a worker only once it consumes,
beat only while it ticks (controller/probe.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.probe import Unhealthy, beat_max_age, check_beat, main, worker_up

METRICS = """# HELP canary_worker_up 1 while a worker consumes these queues.
# TYPE canary_worker_up gauge
canary_worker_up{{pid="12",queues="rollback"}} {value}
canary_tasks_total{{outcome="success",task="rollout.reconcile"}} 1.0
"""


@pytest.mark.parametrize(("value", "up"), [("1.0", True), ("0.0", False), ("NaN", False)])
def test_a_worker_is_up_only_when_its_gauge_says_1(value: str, up: bool) -> None:
    assert worker_up(METRICS.format(value=value)) is up


def test_a_worker_without_the_gauge_is_not_up() -> None:
    assert not worker_up("canary_worker_upgrade 1.0\nsomething_else 1.0\n")


def test_beat_is_healthy_while_its_schedule_file_is_fresh(tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    data = tmp_path / "celerybeat-schedule.dat"  # dbm.dumb's file next to the name
    data.write_bytes(b"x")
    os.utime(data, (1000.0, 1000.0))
    assert "5s ago" in check_beat(schedule, max_age=16, now=1005.0)
    with pytest.raises(Unhealthy, match="20s ago"):
        check_beat(schedule, max_age=16, now=1020.0)


def test_beat_without_a_schedule_file_has_not_started(tmp_path: Path) -> None:
    with pytest.raises(Unhealthy, match="has not started"):
        check_beat(tmp_path / "celerybeat-schedule", max_age=16)


def test_the_allowed_age_follows_the_reconcile_interval() -> None:
    assert beat_max_age({}) == 16.0
    assert beat_max_age({"CANARY_RECONCILE_INTERVAL_SECONDS": "30"}) == 100.0
    assert beat_max_age({"CANARY_RECONCILE_INTERVAL_SECONDS": "soon"}) == 16.0


def test_the_exit_code_is_what_docker_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["beat", "--schedule", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: no schedule file")
    with pytest.raises(SystemExit) as usage:
        main(["nonsense"])
    assert usage.value.code == 2
