"""On-call's view of a rollout on the real stack: Flower reads the tasks from real
workers' events, a real Prometheus scrapes the controller's own metrics, and the
logs carry the bound fields and never a secret from the settings."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controller.lab.stack import RolloutLab
from controller.operations import pause_rollout, resume_rollout
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import session_factory
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import begin, deploy, finished, start_lab, wait_for

pytestmark = pytest.mark.integration

FLOWER_PASSWORD = "fl0wer-" + secrets.token_hex(8)
METRICS_TOKEN = secrets.token_hex(16)
API_TOKEN = secrets.token_hex(16)
DB_PASSWORD = "dbpw-" + secrets.token_hex(8)  # PostgreSQL trusts loopback and ignores it


@pytest.fixture(scope="module")
def oncall(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with postgres_schema() as url:
        url = url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
        lab = start_lab(
            tmp_path_factory.mktemp("oncall"),
            url,
            extra_env={
                "CANARY_FLOWER_USER": "oncall",
                "CANARY_FLOWER_PASSWORD": FLOWER_PASSWORD,
                "CANARY_METRICS_TOKEN": METRICS_TOKEN,
                "CANARY_API_TOKENS": f"ops:viewer:{API_TOKEN}",
            },
        )
        try:
            flower = lab.start_flower()
            lab.start_controller()
            api = lab.start_api()
            assert lab.prometheus is not None
            lab.prometheus.reconfigure(
                [i.address for i in lab.instances.values()],
                scrape_interval="1s",
                extra_scrape_configs=[
                    {
                        "job_name": "canary-api",
                        "authorization": {"credentials": METRICS_TOKEN},
                        "static_configs": [{"targets": [api.removeprefix("http://")]}],
                    },
                    {
                        "job_name": "canary-workers",
                        "static_configs": [{"targets": list(lab.worker_metrics.values())}],
                    },
                ],
            )
            yield {"lab": lab, "flower": flower, "api": api, "url": url}
        finally:
            lab.stop()


def prom(lab: RolloutLab, query: str) -> list[dict[str, Any]]:
    assert lab.prometheus is not None
    return lab.prometheus.query(query)


def eventually(check, timeout: float = 30, what: str = "condition") -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_follow_a_rollout_in_flower_prometheus_and_logs(oncall: dict[str, Any]) -> None:
    lab: RolloutLab = oncall["lab"]
    sessions = session_factory(lab.database_url)
    version = deploy(lab)
    rollout_id = begin(lab, version)

    # Hold it at 25 % so Prometheus and the store can be compared at rest.
    def at_25(rollout, _events) -> bool:  # noqa: ANN001
        return rollout.weight == 25

    wait_for(lab, rollout_id, at_25)
    with sessions() as session:
        assert pause_rollout(
            session, rollout_id, reason="compare", actor="t", now=utcnow()
        ).accepted
        stored = repository.get_rollout(session, rollout_id).weight
    query = f'canary_rollout_weight{{rollout_id="{rollout_id}"}}'
    series = eventually(
        lambda: [s for s in prom(lab, query) if float(s["value"][1]) == stored],
        what="Prometheus to show the stored weight",
    )
    assert stored == 25
    assert series[0]["metric"]["service"] == lab.settings.service
    # The weight matched before the pause too: wait for a scrape taken after it.
    eventually(
        lambda: [s for s in prom(lab, 'canary_rollouts{state="paused"}') if float(s["value"][1])],
        what="Prometheus to count the paused rollout",
    )
    with sessions() as session:
        assert resume_rollout(session, rollout_id, actor="t", now=utcnow()).accepted
    assert wait_for(lab, rollout_id, finished).state == "succeeded"

    # Prometheus agrees with the store on finished rollouts and measurements.
    with sessions() as session:
        succeeded = sum(
            1 for r in repository.list_rollouts(session, limit=500) if r.state == "succeeded"
        )
        measured = sum(
            1
            for r in repository.list_rollouts(session, limit=500)
            for e in repository.events_for(session, r.id, ["measurement"])
        )
    eventually(
        lambda: (
            prom(lab, 'canary_rollouts{state="succeeded"}')
            and float(prom(lab, 'canary_rollouts{state="succeeded"}')[0]["value"][1]) == succeeded
        ),
        what="succeeded count",
    )
    eventually(
        lambda: float(prom(lab, "sum(canary_measurements_total)")[0]["value"][1]) == measured,
        what="measurement count",
    )
    workers = eventually(
        lambda: prom(lab, 'canary_tasks_total{task="rollout.advance_batch"}'),
        what="worker task counters",
    )
    assert sum(float(s["value"][1]) for s in workers) > 0
    assert prom(lab, 'canary_worker_up{queues=~"(.*,)?rollback(,.*)?"} == 1')

    # Flower: the rollout's tasks, with its id, service and stage, and readable results.
    auth = ("oncall", FLOWER_PASSWORD)
    assert httpx.get(f"{oncall['flower']}/api/tasks", trust_env=False).status_code == 401

    def flower_tasks() -> list[dict[str, Any]]:
        tasks = httpx.get(
            f"{oncall['flower']}/api/tasks",
            auth=auth,
            trust_env=False,
            params={"limit": 5000},
            timeout=10,
        ).json()
        return [
            t
            for t in tasks.values()
            if rollout_id in str(t.get("kwargs")) and t.get("state") == "SUCCESS"
        ]

    tasks = eventually(
        lambda: [t for t in flower_tasks() if "succeeded" in str(t["result"])],
        what="the final task in Flower",
    )
    everything = flower_tasks()
    assert {t["name"] for t in everything} >= {"rollout.advance_batch"}
    # Work, not ticks: no reconcile in the list, and almost no advance that did nothing.
    listed = httpx.get(
        f"{oncall['flower']}/api/tasks", auth=auth, trust_env=False, params={"limit": 5000}
    ).json()
    names = [t.get("name") for t in listed.values()]
    assert "rollout.reconcile" not in names
    advances = [
        line
        for t in listed.values()
        if t.get("name") == "rollout.advance_batch"
        for line in result_lines(t)
    ]
    idle = [line for line in advances if "nothing done" in line]
    assert len(idle) <= max(1, len(advances) // 10), (len(idle), len(advances))
    stages = {t["kwargs"] for t in everything}
    assert any("canary 10%" in k for k in stages) and any("ramp 100%" in k for k in stages)
    assert all(lab.settings.service in t["kwargs"] for t in everything)
    assert any(line.startswith(f"{rollout_id} succeeded") for line in result_lines(tasks[0]))
    assert any("weight 10%" in str(t["result"]) for t in everything)

    # `canary history` tells the same story as Flower.
    history = subprocess.run(
        [sys.executable, "-m", "controller", "history", rollout_id, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **lab.env()},
    )
    assert history.returncode == 0, history.stderr
    kinds = [e["kind"] for e in json.loads(history.stdout)]
    assert kinds[0] == "created" and "paused" in kinds and "resumed" in kinds

    # Logs: bound fields on the worker's lines, and no secret anywhere.
    worker_lines = [
        json.loads(line)
        for line in (lab.workdir / "workers" / "worker-rollouts.log").read_text().splitlines()
        if line.startswith("{")
    ]
    ours = [line for line in worker_lines if line.get("rollout_id") == rollout_id]
    assert ours and all({"service", "stage"} <= set(line) for line in ours)
    assert any(line.get("stage") == "canary 10%" for line in ours)
    for log_file in lab.workdir.rglob("*.log"):
        text = log_file.read_text(errors="replace")
        for secret in (FLOWER_PASSWORD, METRICS_TOKEN, API_TOKEN, DB_PASSWORD):
            assert secret not in text, f"{secret[:4]}... in {log_file.name}"


def result_lines(task: dict[str, Any]) -> list[str]:
    """A batch's result as Flower shows it (a repr): one sentence per rollout."""
    text = str(task.get("result")).strip("'\"")
    return text.replace("\\n", "\n").split("\n")


def test_status_watch_follows_to_the_end(oncall: dict[str, Any]) -> None:
    lab: RolloutLab = oncall["lab"]
    version = deploy(lab)
    rollout_id = begin(lab, version)
    watched = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "status",
            rollout_id,
            "--watch",
            "--json",
            "--interval",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **lab.env()},
    )
    assert watched.returncode == 0, watched.stderr
    frames = [json.loads(line) for line in watched.stdout.splitlines()]
    assert frames[-1]["state"] == "succeeded"
    seen_stages = {f["stage"] for f in frames}
    assert {"canary 10%", "ramp 50%"} <= seen_stages
    holding = [f for f in frames if f["hold_left_seconds"] is not None]
    assert holding and all(f["hold_left_seconds"] >= 0 for f in holding)
    assert any(f["criteria"] for f in frames)
    current = [s["label"] for s in frames[-1]["steps"] if s["status"] == "done"]
    assert current[-1] == "verify"
