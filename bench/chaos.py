"""Benchmark: no rollback lost while the parts of the controller fail.

50 services, each with one rollout of a canary known in advance to be healthy or
faulty (every third; 5xx, failed writes, auth failures, rising queue lag in turn),
under two workers (rollouts, runbooks, notifications) and a rollback worker, with
HAProxy, Prometheus, a Redis and a PostgreSQL of their own. While they run, a
random worker is SIGKILLed (and restarted) every 5-20 s, Redis is restarted three
times with nothing persisted, PostgreSQL once (fast shutdown), and Prometheus is
stopped for 30 s. See ``controller.lab.chaos`` for what each figure counts.

    .venv/bin/python bench/chaos.py [--rollouts 50] [--seed 7] [--json]

Prints each fault as it happens, every problem found, then the line
``chaos rollouts=50 lost=... wrong_final_state=... duplicate_or_out_of_order_steps=...
false_rolled_back=... max_rollback_s=...``; exit code 1 if any count is not 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.lab.chaos import ChaosScenario, run_chaos, summary  # noqa: E402
from controller.lab.controllers import LabSettings  # noqa: E402
from controller.lab.fleet import FleetLab  # noqa: E402

# The shortest task time limit the settings allow (its soft limit must leave room
# for the 30 s of one advance's checks) and a lease just above it: a killed
# worker's rollouts are taken over as soon as the settings allow.
SETTINGS = LabSettings(
    reconcile_interval_seconds=1.0, lease_seconds=37.0, task_time_limit_seconds=36.0
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=50, help="services, one rollout each")
    parser.add_argument("--seed", type=int, default=7, help="which workers die when")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    scenario = dataclasses.replace(ChaosScenario(), rollouts=args.rollouts, seed=args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    print(f"work dir {workdir}", flush=True)
    try:
        with FleetLab(workdir, scenario.services(), SETTINGS) as lab:
            report = run_chaos(lab, scenario, say=lambda line: print(line, flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    for problem in report.problems:
        print(f"problem: {problem}")
    times = sorted(t for t in report.rollback_seconds if t != float("inf"))
    if times:
        print(
            f"rollbacks={len(report.rollback_seconds)} "
            f"median_rollback_s={times[len(times) // 2]:.1f} "
            f"runbooks_not_run_once={report.runbooks_not_run_once} "
            f"drifts_reasserted={report.drifts_reasserted} "
            f"unplanned_exits={len(report.unplanned_exits)} "
            f"duration_s={report.duration_s:.0f}"
        )
    if args.json:
        print(json.dumps(summary(report)))
    print(report.line())
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
