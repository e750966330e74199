"""The detection benchmark's scenarios as a test: 26 histories backfilled into a real
Prometheus and replayed against the standard plan with ``canary backtest``'s code.
Every faulty canary rolled back after its fault, no healthy one rolled back, nothing
promoted without data; and the fixed-threshold way, on the same data, does roll back
the healthy canary with little traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import PLANS_DIR
from controller.backtest import Action
from controller.lab.detection import FAMILY_CRITERIA, detection_goal_s, run_detection
from controller.lab.errors import MissingBinaryError
from controller.plan_loader import load_plan

pytestmark = pytest.mark.integration


def test_every_scenario_ends_as_it_must(tmp_path: Path) -> None:
    try:
        report = run_detection(tmp_path, load_plan(PLANS_DIR / "standard.yaml"))
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    wrong = [
        f"{r.scenario.name}: expected {r.scenario.expect}, got {r.outcome.value}: {r.reason}"
        for r in report.results
        if (r.scenario.faulty and not r.caught)
        or (r.scenario.expect == "continue" and r.outcome != Action.CONTINUE)
        or (r.scenario.expect == "hold" and r.outcome not in (Action.HOLD, Action.PAUSE))
    ]
    assert wrong == [], "\n".join(wrong)
    figures = report.figures()
    assert figures["scenarios"] >= 24
    assert figures["missed"] == figures["false_rollbacks"] == figures["promoted_on_missing"] == 0
    by_name = {r.scenario.name: r for r in report.results}
    # Each criterion's evidence is what decides: failed writes at once, a 30 % auth
    # failure rate within two checks, a 40x error rate once its 5 minutes are up.
    assert by_name["writes-many"].detect_s == 0
    assert by_name["auth-30pct"].detect_s is not None and by_name["auth-30pct"].detect_s <= 120
    assert by_name["5xx-40x"].detect_s is not None and by_name["5xx-40x"].detect_s <= 6 * 60
    assert figures["healthy_held"] == 0
    # Detected within each criterion's sustained_for and the longer of one interval
    # and its window (median): the window must roll over a fault before it shows.
    plan = load_plan(PLANS_DIR / "standard.yaml")
    for family in FAMILY_CRITERIA:
        median = report.figures(family)["median_detect_s"]
        goal = detection_goal_s(plan, family)
        assert median is not None and median <= goal, (family, median, goal)
    # 3x the baseline with enough traffic trips once the window has filled and the
    # breach has lasted its 5 minutes, not later.
    high = by_name["5xx-3x-high-traffic"].detect_s
    assert high is not None and high <= detection_goal_s(plan, "5xx")
    # A fixed threshold on the point estimate rolls the low-traffic healthy canary back.
    assert by_name["healthy-low-traffic"].threshold_outcome == Action.ROLLBACK
