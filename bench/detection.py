"""Benchmark: are the verdicts right? Every bad canary caught, no healthy one rolled back.

26 scenarios (``controller/lab/scenarios.py``): each seed stop criterion (5xx vs
baseline, auth failures, queue lag rising, failed writes) and p99 latency at three
magnitudes, healthy canaries with Poisson noise at high and low traffic, a zero-error
baseline, error series created lazily, a counter reset, scrape gaps, a flat high lag,
a slow lag rise under noise, and a canary that exposes nothing. 40 minutes of each,
backfilled into a real Prometheus with promtool and replayed against the standard
plan's stop criteria with ``canary backtest``'s code; the fault begins at minute 12.
The same measurements are also judged with fixed thresholds and a failure limit of 3
(the Argo Rollouts / Flagger way), for comparison.

    .venv/bin/python bench/detection.py [--plan config/plans/standard.yaml] [--verbose]

One line per judge family, then ``detection scenarios=... caught=... missed=...
false_rollbacks=... promoted_on_missing=... median_detect_s=... threshold_caught=...
threshold_false_rollbacks=...``; exit code 1 unless missed, false_rollbacks and
promoted_on_missing are all 0.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import PLANS_DIR  # noqa: E402
from controller.lab.detection import FAMILY_CRITERIA, detection_goal_s, run_detection  # noqa: E402
from controller.plan_loader import load_plan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", type=Path, default=PLANS_DIR / "standard.yaml")
    parser.add_argument("--verbose", action="store_true", help="one line per scenario")
    args = parser.parse_args()
    plan = load_plan(args.plan)
    workdir = Path(tempfile.mkdtemp(prefix="bench-detection-"))
    started = time.monotonic()
    try:
        report = run_detection(workdir, plan)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.verbose:
        for r in report.results:
            detect = "-" if r.detect_s is None else f"{r.detect_s:.0f}s"
            threshold = "-" if r.threshold_detect_s is None else f"{r.threshold_detect_s:.0f}s"
            print(
                f"{r.scenario.name:<28} expect={r.scenario.expect:<8} got={r.outcome.value:<8} "
                f"detect={detect:<6} threshold={r.threshold_outcome.value}/{threshold}  "
                f"{r.reason[:160]}"
            )
    for family in sorted({r.scenario.family for r in report.results}):
        print(report.line(family))
    for family, criterion in FAMILY_CRITERIA.items():
        goal = detection_goal_s(plan, family)
        median = report.figures(family)["median_detect_s"]
        met = median is not None and median <= goal
        print(
            f"goal family={family} criterion={criterion} median_detect_s={median} "
            f"sustained_for+max(interval,window)_s={goal:.0f} {'met' if met else 'NOT met'}"
        )
    print(f"replayed in {time.monotonic() - started:.0f}s")
    print(report.line())
    figures = report.figures()
    return (
        0
        if not (figures["missed"] or figures["false_rollbacks"] or figures["promoted_on_missing"])
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
