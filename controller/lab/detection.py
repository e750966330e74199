"""The detection benchmark: the scenario library judged by a plan, through a real
Prometheus, the way ``canary backtest`` replays history.

The histories of ``controller.lab.scenarios`` are backfilled into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics`` and served by a Prometheus of the
lab; each scenario is replayed with ``controller.backtest.replay`` (the engine's
decision rules) and held against what it must end in. The same data is also judged
the Argo Rollouts / Flagger way (a fixed threshold on the point estimate, rolled back
after ``THRESHOLD_FAILURE_LIMIT`` failing checks in a row) for comparison.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.analysis.runner import Measurement
from controller.backtest import Action, Backtest, backtest_values, replay
from controller.lab.binaries import require_binary
from controller.lab.errors import LabError
from controller.lab.prometheus import PrometheusServer, start_prometheus
from controller.lab.scenarios import (
    CANARY,
    DURATION_S,
    FAULT_AT_S,
    STABLE,
    Scenario,
    library,
    openmetrics,
)
from controller.metrics import PrometheusProvider
from controller.plan import Plan

# The criterion of the standard plan each family of scenarios is about.
FAMILY_CRITERIA = {
    "5xx": "http_5xx_vs_baseline",
    "auth": "auth_failures",
    "lag": "queue_lag_rising",
    "latency": "latency_p99_vs_baseline",
    "writes": "failed_writes",
}


def detection_goal_s(plan: Plan, family: str) -> float:
    """The longest median time to detect a family's faults that the plan allows.

    A fault that begins just after a check is fully inside a criterion's window
    only once the window has rolled over it, and the breach it starts must then
    last ``sustained_for``. With checks one interval apart, that is
    ``sustained_for`` + the longer of the interval and the window: with a window
    no longer than the interval, the issue's "sustain + one interval".
    """
    criterion = next(c for c in plan.stop_criteria if c.name == FAMILY_CRITERIA[family])
    window = criterion.window or plan.analysis.window
    return (criterion.sustained_for + max(plan.analysis.interval, window)).total_seconds()


THRESHOLD_FAILURE_LIMIT = 3
# The fixed thresholds an Argo Rollouts AnalysisTemplate or a Flagger metric would
# carry for the same seed criteria.
THRESHOLDS = {"5xx": 0.01, "auth": 0.02, "writes": 0.0, "lag_s": 120.0, "latency_ms": 300.0}


@dataclass
class ScenarioResult:
    scenario: Scenario
    outcome: Action
    detect_s: float | None  # from the fault to the rollback decision
    threshold_outcome: Action
    threshold_detect_s: float | None
    reason: str

    @property
    def caught(self) -> bool:
        return (
            self.scenario.faulty and self.outcome == Action.ROLLBACK and self.detect_s is not None
        )

    @property
    def false_rollback(self) -> bool:
        return self.outcome == Action.ROLLBACK and not self.caught

    @property
    def healthy_held(self) -> bool:
        """A healthy canary paused or still holding: no harm done, but a release late."""
        return self.scenario.expect == "continue" and self.outcome in (Action.PAUSE, Action.HOLD)

    @property
    def promoted_on_missing(self) -> bool:
        return self.scenario.expect == "hold" and self.outcome == Action.CONTINUE


@dataclass
class DetectionReport:
    results: list[ScenarioResult] = field(default_factory=list)

    def _faulty(self, family: str | None) -> list[ScenarioResult]:
        return [
            r
            for r in self.results
            if r.scenario.faulty and (family is None or r.scenario.family == family)
        ]

    def figures(self, family: str | None = None) -> dict[str, float | int | None]:
        chosen = [r for r in self.results if family is None or r.scenario.family == family]
        faulty = self._faulty(family)
        detect = [r.detect_s for r in faulty if r.caught and r.detect_s is not None]
        threshold_caught = [
            r
            for r in faulty
            if r.threshold_outcome == Action.ROLLBACK and r.threshold_detect_s is not None
        ]
        return {
            "scenarios": len(chosen),
            "caught": sum(r.caught for r in faulty),
            "missed": sum(not r.caught for r in faulty),
            "false_rollbacks": sum(r.false_rollback for r in chosen),
            "promoted_on_missing": sum(r.promoted_on_missing for r in chosen),
            "median_detect_s": statistics.median(detect) if detect else None,
            "threshold_caught": len(threshold_caught),
            "threshold_false_rollbacks": sum(
                r.threshold_outcome == Action.ROLLBACK and r not in threshold_caught for r in chosen
            ),
            "healthy_held": sum(r.healthy_held for r in chosen),
        }

    def line(self, family: str | None = None) -> str:
        figures = self.figures(family)
        median = figures["median_detect_s"]
        words = [f"{name}={value}" for name, value in figures.items() if name != "median_detect_s"]
        words.insert(5, f"median_detect_s={'-' if median is None else f'{median:.0f}'}")
        head = "detection" if family is None else f"family={family}"
        return " ".join([head, *words])


def run_detection(
    workdir: Path, plan: Plan, scenarios: list[Scenario] | None = None
) -> DetectionReport:
    """Backfill, serve and replay every scenario; Prometheus is stopped at the end."""
    scenarios = scenarios if scenarios is not None else library()
    end = int(time.time()) - 120  # blocks must end in the past
    prometheus = _serve_history(workdir, openmetrics(scenarios, end))
    try:
        provider = PrometheusProvider(prometheus.url, timeout_seconds=10)
        start = datetime.fromtimestamp(end - DURATION_S, UTC)
        fault = start + timedelta(seconds=FAULT_AT_S)
        report = DetectionReport()
        for scenario in scenarios:
            values = backtest_values(
                plan,
                service=scenario.name,
                canary_version=CANARY,
                stable_version=STABLE,
                overrides={},
            )
            result = replay(
                plan,
                provider,
                values,
                start + plan.analysis.window,
                start + timedelta(seconds=DURATION_S),
            )
            report.results.append(_judge(scenario, result, fault))
        return report
    finally:
        prometheus.stop()


def _serve_history(workdir: Path, document: str) -> PrometheusServer:
    source = workdir / "scenarios.om"
    source.write_text(document)
    storage = workdir / "prometheus" / "data"
    storage.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        [require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics"]
        + [str(source), str(storage)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if made.returncode != 0:
        raise LabError(f"promtool could not build blocks: {made.stderr.strip()[-2000:]}")
    return start_prometheus(workdir, [])


def _judge(scenario: Scenario, result: Backtest, fault: datetime) -> ScenarioResult:
    first = next((c for c in result.checks if c.decision.action == Action.ROLLBACK), None)
    outcome = result.outcome.action
    detect_s = None
    if first is not None:
        outcome = Action.ROLLBACK
        if scenario.faulty and first.at >= fault:
            detect_s = (first.at - fault).total_seconds()
    threshold_at = _threshold_rollback(result)
    threshold_detect = None
    if threshold_at is not None and scenario.faulty and threshold_at >= fault:
        threshold_detect = (threshold_at - fault).total_seconds()
    return ScenarioResult(
        scenario,
        outcome,
        detect_s,
        Action.ROLLBACK if threshold_at is not None else Action.CONTINUE,
        threshold_detect,
        result.outcome.sentence(),
    )


def _threshold_rollback(result: Backtest) -> datetime | None:
    """When a fixed-threshold analysis would have rolled back, from the same inputs."""
    streak = 0
    for check in result.checks:
        failing = any(_over_threshold(m) for m in check.measurements)
        streak = streak + 1 if failing else 0
        if streak >= THRESHOLD_FAILURE_LIMIT:
            return check.at
    return None


def _over_threshold(m: Measurement) -> bool:
    inputs, details = m.inputs, m.judgement.details

    def share(errors: str, total: str) -> float | None:
        e, t = inputs.get(errors), inputs.get(total)
        if e is None or t is None or t <= 0:
            return None
        return e / t

    if m.judge == "ratio_to_baseline":
        rate = share("canary_errors", "canary_total")
        return rate is not None and rate > THRESHOLDS["5xx"]
    if m.judge == "ratio_threshold":
        rate = share("errors", "total")
        return rate is not None and rate > THRESHOLDS["auth"]
    if m.judge == "zero_tolerance":
        failures = inputs.get("failures")
        return failures is not None and failures > THRESHOLDS["writes"]
    if m.judge == "rising_trend":
        last = details.get("last")
        return last is not None and last > THRESHOLDS["lag_s"]
    if m.judge == "latency_to_baseline":
        value = m.judgement.value
        return value is not None and value > THRESHOLDS["latency_ms"]
    return False
