"""The Grafana dashboard and the controller's alerting rules only use metrics the
controller exposes, and the rules pass promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from config import CONFIG_DIR
from controller.store.db import migrate, session_factory
from controller.telemetry import StoreCollector

DASHBOARD = CONFIG_DIR / "grafana" / "canary-rollouts.json"
RULES = [
    CONFIG_DIR / "prometheus" / "controller-alerts.yml",
    CONFIG_DIR / "prometheus" / "service-alerts.yml",
]
WORKER_METRICS = {
    "canary_tasks_total",
    "canary_task_failures_total",
    "canary_task_seconds",
    "canary_task_seconds_bucket",
    "canary_worker_up",
}


def exposed(tmp_path: Path) -> set[str]:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    registry = CollectorRegistry()
    registry.register(StoreCollector(session_factory(url)))
    names = set()
    suffixes = {"counter": ["_total"], "summary": ["_sum", "_count"], "gauge": [""]}
    for family in registry.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names | WORKER_METRICS


def used(expr: str) -> set[str]:
    return set(re.findall(r"\bcanary_[a-z_]+\b", expr))


def test_dashboard_queries_use_exposed_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    missing = set().union(*map(used, exprs)) - exposed(tmp_path)
    assert not missing, missing
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("state", "weight", "limits", "rollbacks"):
        assert topic in titles


def test_controller_rules_use_exposed_metrics(tmp_path: Path) -> None:
    rules = yaml.safe_load(RULES[0].read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {
        "CanaryReconcileStalled",
        "CanaryRollbackFailed",
        "CanaryNoRollbackWorker",
    }
    missing = set().union(*(used(r["expr"]) for r in rules)) - exposed(tmp_path)
    assert not missing, missing


@pytest.mark.parametrize("rules", RULES, ids=lambda p: p.name)
def test_rules_pass_promtool(rules: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
