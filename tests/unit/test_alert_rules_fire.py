"""Every shipped alerting rule can fire at the scrape interval of every shipped
Prometheus config that loads it: docker-compose's, the systemd layout's and the lab's.

A rule can pass promtool's syntax check and still never fire where it runs: a
``rate(...[5s])`` scraped every 5 s holds one sample per window, so it answers
nothing (the compose deployment's service alert was dead that way while the lab,
scraping every second, passed). Two checks, so neither hides behind the other:

* statically, every range window in the rules is at least 4x the config's slowest
  scrape interval (Prometheus's own advice: a missed scrape still leaves two samples);
* by running the rules with ``promtool test rules`` on synthetic series sampled at
  that config's scrape interval, half an interval out of phase with the rule
  evaluations (as real scrapes are), and checking each alert is quiet before its
  fault and firing, with the labels the webhook needs, soon after it.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from config import CONFIG_DIR
from controller.durations import format_duration, parse_duration
from controller.lab import stack
from controller.lab.prometheus import render_config

PROMETHEUS_DIR = CONFIG_DIR / "prometheus"
# Prometheus's defaults when a config says nothing.
DEFAULT_INTERVAL = timedelta(minutes=1)
MIN_SAMPLES_PER_WINDOW = 4


@dataclass(frozen=True)
class Deployment:
    """A shipped Prometheus config as far as alerting goes: how often it scrapes (its
    slowest job) and evaluates, and the rule files it loads."""

    name: str
    scrape_interval: timedelta
    evaluation_interval: timedelta
    rule_files: tuple[Path, ...]


def deployment(name: str, config: dict[str, Any], base: Path) -> Deployment:
    """Read a prometheus.yml's intervals and rule files (relative to ``base``)."""
    settings = config.get("global", {})
    default = parse_duration(settings.get("scrape_interval", "1m"))
    intervals = [
        parse_duration(job["scrape_interval"]) if "scrape_interval" in job else default
        for job in config.get("scrape_configs", [])
    ]
    return Deployment(
        name=name,
        scrape_interval=max(intervals, default=default),
        evaluation_interval=parse_duration(settings.get("evaluation_interval", "1m")),
        rule_files=tuple(base / path for path in config.get("rule_files", [])),
    )


def shipped_deployments() -> list[Deployment]:
    """Every Prometheus the project ships or starts with rule files."""

    def from_file(name: str, path: Path) -> Deployment:
        return deployment(name, yaml.safe_load(path.read_text()), path.parent)

    lab = render_config([], stack.SCRAPE_INTERVAL, list(stack.ALERT_RULES))
    return [
        from_file("compose", PROMETHEUS_DIR / "prometheus.yml"),
        from_file("systemd", PROMETHEUS_DIR / "systemd.yml"),
        deployment("lab", lab, Path("/")),
    ]


DEPLOYMENTS = shipped_deployments()


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def range_windows(expr: str) -> list[timedelta]:
    """Every range (``[5m]``, subqueries' too) in a PromQL expression."""
    found: list[timedelta] = []

    def walk(node: object) -> None:
        if type(node).__name__ in ("MatrixSelector", "SubqueryExpr"):
            found.append(node.range)  # type: ignore[attr-defined]
        for attribute in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
            child = getattr(node, attribute, None)
            for item in child if isinstance(child, list) else [child]:
                if item is not None:
                    walk(item)

    walk(promql_parser.parse(expr))
    return found


def test_every_shipped_config_loads_rules_that_exist() -> None:
    assert {d.name for d in DEPLOYMENTS} == {"compose", "systemd", "lab"}
    for shipped in DEPLOYMENTS:
        assert shipped.rule_files, f"{shipped.name} loads no rules"
        for path in shipped.rule_files:
            assert path.is_file(), f"{shipped.name}: {path} does not exist"


@pytest.mark.parametrize("shipped", DEPLOYMENTS, ids=lambda d: d.name)
def test_every_window_holds_four_scrapes(shipped: Deployment) -> None:
    shortest = shipped.scrape_interval * MIN_SAMPLES_PER_WINDOW
    too_short = [
        f"{path.name}: {rule.get('alert') or rule.get('record')} uses [{format_duration(window)}]"
        for path in shipped.rule_files
        for rule in rules_of(path)
        for window in range_windows(rule["expr"])
        if window < shortest
    ]
    assert not too_short, (
        f"{shipped.name} scrapes every {format_duration(shipped.scrape_interval)}: windows "
        f"shorter than {format_duration(shortest)} see fewer than {MIN_SAMPLES_PER_WINDOW} "
        f"samples: {too_short}"
    )


def test_the_window_check_catches_a_window_of_one_scrape() -> None:
    """What the compose deployment shipped: one 5 s scrape per 5 s window."""
    assert (
        range_windows("sum(rate(x[5s])) / sum(rate(y[5s] offset 1m)) > 0.1")
        == [timedelta(seconds=5)] * 2
    )
    assert range_windows("max_over_time(rate(x[1m])[10m:1m])") == [
        timedelta(minutes=10),
        timedelta(minutes=1),
    ]


# --- the rules fire on series sampled at the config's scrape interval ----------------

# Seconds since the start of the synthetic history; every fault starts here, once the
# longest window of any rule (10 minutes) holds healthy samples only.
FAULT_AT = 660.0
Value = float | None  # None: no sample (a series not created yet, or gone)


def after_fault(t: float) -> float:
    return max(0.0, t - FAULT_AT)


@dataclass(frozen=True)
class Scenario:
    """Series that make one alert fire: healthy before FAULT_AT, faulty after.

    ``labels`` are those the alert's expression carries over (the rule's own labels
    are read from the rule).
    """

    series: dict[str, Callable[[float], Value]]
    labels: dict[str, str] = field(default_factory=dict)


def gauge(healthy: float, faulty: float | None) -> Callable[[float], Value]:
    return lambda t: healthy if t < FAULT_AT else faulty


SCENARIOS: dict[str, Scenario] = {
    # The demo service creates its 5xx series with the first 5xx (as client libraries
    # do); the canary then answers a third of its requests with 500.
    "CanaryHigh5xxRate": Scenario(
        series={
            'demo_http_requests_total{environment="production",service="demo",'
            'version="1.1.0",code="200"}': lambda t: 10 * t,
            'demo_http_requests_total{environment="production",service="demo",'
            'version="1.1.0",code="500"}': lambda t: 5 * after_fault(t) if t > FAULT_AT else None,
            'demo_http_requests_total{environment="production",service="demo",'
            'version="1.0.0",code="200"}': lambda t: 10 * t,
        },
        labels={"service": "demo", "version": "1.1.0"},
    ),
    "CanaryReconcileStalled": Scenario(series={"canary_reconcile_lag_seconds": gauge(0.5, 300)}),
    "CanaryRollbackFailed": Scenario(
        series={'canary_rollouts{service="pay",state="rollback_failed"}': gauge(0, 1)}
    ),
    # The worker's process ends: its series goes stale, nothing else says "0".
    "CanaryNoRollbackWorker": Scenario(
        series={'canary_worker_up{queues="rollback"}': gauge(1, None)}
    ),
    # The only reconcile worker stops: its series goes stale and the store's age of
    # the last reconcile run grows from then on.
    "CanaryNoReconcileWorker": Scenario(
        series={
            'canary_worker_up{queues="reconcile"}': gauge(1, None),
            "canary_reconcile_last_run_age_seconds": lambda t: 2 + after_fault(t),
        }
    ),
    "CanaryRolloutHeldWithTraffic": Scenario(
        series={
            'canary_rollout_waiting_seconds{rollout_id="r-1",service="pay",state="paused"}': (
                gauge(10, 3700)
            ),
            'canary_rollout_progress_deadline_seconds{rollout_id="r-1",service="pay"}': (
                lambda t: 3600
            ),
        },
        labels={"rollout_id": "r-1", "service": "pay", "state": "paused"},
    ),
    "CanaryRollbackStuck": Scenario(
        series={
            'canary_rollout_rolling_back_seconds{rollout_id="r-2",service="web",'
            'state="rolling_back"}': gauge(3, 600),
        },
        labels={"rollout_id": "r-2", "service": "web", "state": "rolling_back"},
    ),
    # Ten failures a minute, from none.
    "CanaryTaskFailures": Scenario(
        series={'canary_task_failures_total{task="rollout.advance"}': lambda t: after_fault(t) / 6},
        labels={"task": "rollout.advance"},
    ),
}


def sampled(values: Callable[[float], Value], scrape: timedelta, until: float) -> str:
    """promtool's notation for a series scraped every ``scrape`` out of phase with the
    evaluations: the test's grid is half a scrape interval, samples on its odd points,
    the points in between missing (``_``). A series that ends is marked stale, as
    Prometheus does when a target stops exposing it."""
    half = scrape.total_seconds() / 2
    points: list[str] = []
    seen = False
    for index in range(math.ceil(until / half) + 1):
        if index % 2 == 0:
            points.append("_")
            continue
        value = values(index * half)
        if value is not None:
            points.append(repr(float(value)))
            seen = True
        elif seen:
            points.append("stale")
            seen = False
        else:
            points.append("_")
    return " ".join(points)


def fires_by(rule: dict[str, Any], shipped: Deployment) -> float:
    """When the alert must fire at the latest: its fault, plus its longest window, its
    ``for``, two scrapes and two evaluations, on the evaluation grid."""
    windows = range_windows(rule["expr"]) or [timedelta(0)]
    hold = parse_duration(rule.get("for", "0s"))
    slack = 2 * shipped.scrape_interval + 2 * shipped.evaluation_interval
    latest = FAULT_AT + (max(windows) + hold + slack).total_seconds()
    step = shipped.evaluation_interval.total_seconds()
    return math.ceil(latest / step) * step


def promtool_test(rule_file: Path, rule: dict[str, Any], shipped: Deployment) -> str:
    """A promtool unit test: quiet at the fault, firing by ``fires_by``."""
    scenario = SCENARIOS[rule["alert"]]
    until = fires_by(rule, shipped)
    labels = {
        **scenario.labels,
        **rule.get("labels", {}),
        "alertname": rule["alert"],
        "alertstate": "firing",
    }
    firing = "ALERTS{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    test = {
        "rule_files": [str(rule_file)],
        "evaluation_interval": format_duration(shipped.evaluation_interval),
        "tests": [
            {
                "interval": f"{round(shipped.scrape_interval.total_seconds() * 500)}ms",
                "input_series": [
                    {"series": name, "values": sampled(values, shipped.scrape_interval, until)}
                    for name, values in scenario.series.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": f'count(ALERTS{{alertname="{rule["alert"]}"}}) or vector(0)',
                        "eval_time": format_duration(timedelta(seconds=FAULT_AT)),
                        "exp_samples": [{"labels": "{}", "value": 0}],
                    },
                    {
                        "expr": f'ALERTS{{alertname="{rule["alert"]}",alertstate="firing"}}',
                        "eval_time": format_duration(timedelta(seconds=until)),
                        "exp_samples": [{"labels": firing, "value": 1}],
                    },
                ],
            }
        ],
    }
    return yaml.safe_dump(test, sort_keys=False)


def alert_cases() -> list[Any]:
    return [
        pytest.param(shipped, path, rule, id=f"{shipped.name}-{rule['alert']}")
        for shipped in DEPLOYMENTS
        for path in shipped.rule_files
        for rule in rules_of(path)
        if "alert" in rule
    ]


def test_every_shipped_alert_has_a_scenario() -> None:
    alerts = {case.values[2]["alert"] for case in alert_cases()}
    assert alerts - set(SCENARIOS) == set(), "add a scenario that makes it fire"
    assert set(SCENARIOS) - alerts == set(), "a scenario for an alert nobody ships"


@pytest.mark.parametrize(("shipped", "rule_file", "rule"), alert_cases())
def test_the_alert_fires_at_the_scrape_interval_it_runs_at(
    shipped: Deployment, rule_file: Path, rule: dict[str, Any], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    test_file = tmp_path / "test.yml"
    test_file.write_text(promtool_test(rule_file, rule, shipped))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, (
        f"{rule['alert']} ({rule_file.name}) does not fire as it should where {shipped.name} "
        f"scrapes every {format_duration(shipped.scrape_interval)}:\n{result.stdout}"
        f"{result.stderr}"
    )
