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
        "CanaryRolloutHeldWithTraffic",
        "CanaryRollbackStuck",
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


ALERT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: canary_rollout_waiting_seconds{{rollout_id="r-1",service="pay",state="paused"}}
        values: 3000+60x20
      - series: canary_rollout_progress_deadline_seconds{{rollout_id="r-1",service="pay"}}
        values: 3600x20
      - series: canary_rollout_waiting_seconds{{rollout_id="r-3",service="pay",state="blocked"}}
        values: 0+60x20
      - series: canary_rollout_progress_deadline_seconds{{rollout_id="r-3",service="pay"}}
        values: 300x20
      - series: >-
          canary_rollout_rolling_back_seconds{{rollout_id="r-2",service="web",state="rolling_back"}}
        values: 0+60x5
    alert_rule_test:
      - {{eval_time: 5m, alertname: CanaryRolloutHeldWithTraffic, exp_alerts: []}}
      - eval_time: 6m
        alertname: CanaryRolloutHeldWithTraffic
        exp_alerts:  # r-3's plan gives it 5 minutes, r-1's the default hour
          - exp_labels: {{severity: warning, rollout_id: r-3, service: pay, state: blocked}}
            exp_annotations:
              summary: pay rollout r-3 blocked with canary traffic for 6m 0s
              description: canary status r-3; resume, promote, or roll back.
      - eval_time: 11m
        alertname: CanaryRolloutHeldWithTraffic
        exp_alerts:
          - exp_labels: {{severity: warning, rollout_id: r-1, service: pay, state: paused}}
            exp_annotations:
              summary: pay rollout r-1 paused with canary traffic for 1h 1m 0s
              description: canary status r-1; resume, promote, or roll back.
          - exp_labels: {{severity: warning, rollout_id: r-3, service: pay, state: blocked}}
            exp_annotations:
              summary: pay rollout r-3 blocked with canary traffic for 11m 0s
              description: canary status r-3; resume, promote, or roll back.
      - {{eval_time: 2m, alertname: CanaryRollbackStuck, exp_alerts: []}}
      - eval_time: 3m
        alertname: CanaryRollbackStuck
        exp_alerts:
          - exp_labels: {{severity: critical, rollout_id: r-2, service: web, state: rolling_back}}
            exp_annotations:
              summary: web rollout r-2 stuck in rolling_back for 3m 0s
              description: >-
                Is a rollback worker consuming? canary status r-2 shows the router's answers.
"""


def test_held_and_stuck_rollouts_alert(tmp_path: Path) -> None:
    """The rules fire on the gauges the store collector exposes, and not before."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    spec = tmp_path / "test.yml"
    spec.write_text(ALERT_TEST.format(rules=RULES[0]))
    result = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


NO_RECONCILE_TEST = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  # A worker is up on the reconcile queue, yet no reconcile has ever run (+Inf):
  # beat down, or the worker stuck. The age from the store fires the alert.
  - interval: 15s
    input_series:
      - series: canary_worker_up{{queues="reconcile"}}
        values: 1x20
      - series: canary_reconcile_last_run_age_seconds
        values: +Inf+0x20
    alert_rule_test:
      - eval_time: 1m
        alertname: CanaryNoReconcileWorker
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: No reconcile has run for a minute, or no worker consumes the reconcile queue
              description: >-
                Start one: canary worker --queues reconcile; and one canary beat.
                canary status ID says which rollouts wait.
  # Reconcile ran, then stopped for two minutes, then ran again.
  - interval: 15s
    input_series:
      - series: canary_worker_up{{queues="reconcile"}}
        values: 1x20
      - series: canary_reconcile_last_run_age_seconds
        values: 0+15x10 1x10
    alert_rule_test:
      - {{eval_time: 1m, alertname: CanaryNoReconcileWorker, exp_alerts: []}}
      - eval_time: 150s
        alertname: CanaryNoReconcileWorker
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: No reconcile has run for a minute, or no worker consumes the reconcile queue
              description: >-
                Start one: canary worker --queues reconcile; and one canary beat.
                canary status ID says which rollouts wait.
      - {{eval_time: 3m, alertname: CanaryNoReconcileWorker, exp_alerts: []}}
"""


def test_no_reconcile_run_alerts_from_the_age_of_the_last_run(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    spec = tmp_path / "test.yml"
    spec.write_text(NO_RECONCILE_TEST.format(rules=RULES[0]))
    result = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def panel_expr(title: str) -> str:
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == title]
    (target,) = panel["targets"]
    return target["expr"]


def test_the_rollbacks_stat_counts_rollbacks_not_aborts(tmp_path: Path) -> None:
    """canary_rollbacks carries every rollout taken back to stable by its final state,
    aborts included; an abort is a person's choice, not a rollback. Evaluated by
    promtool on the series the collector exposes."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    series = {
        'canary_rollbacks{trigger="criterion",criterion="http_5xx",state="rolled_back"}': 2,
        'canary_rollbacks{trigger="alert",criterion="",state="rollback_failed"}': 1,
        'canary_rollbacks{trigger="manual",criterion="",state="rolling_back"}': 1,
        'canary_rollbacks{trigger="manual",criterion="",state="aborted"}': 5,
    }
    test = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": f"{v}x3"} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": panel_expr("Rollbacks"),
                        "eval_time": "2m",
                        "exp_samples": [{"labels": "{}", "value": 4}],
                    }
                ],
            }
        ],
    }
    spec = tmp_path / "test.yml"
    spec.write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
