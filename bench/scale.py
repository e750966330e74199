"""Benchmark: many concurrent rollouts, each to be checked on the plan's clock.

For each N, a fleet of N healthy services (two slots each), one HAProxy with a
backend per service, one Prometheus, a Redis and a PostgreSQL of their own, the
default worker layout (two ``rollouts`` workers of concurrency 2, one for rollback
and reconcile, one for runbooks and notifications), beat and the API; N rollouts
held at a 10 % canary with a 10 s interval. The services are synthetic by default
(``controller.lab.synthetic_fleet``: thin instances in one process, their series on
one exporter) so that the figures are the controller's; ``--fleet demo`` runs real
demo service instances instead, which saturate a 2-core machine near N=300. See
``controller.lab.scale`` for what each figure counts.

    .venv/bin/python bench/scale.py --rollouts 100 300 1000 [--window 60] [--json]

Prints, per N, ``scale rollouts=N checks_per_min=… lag_p50_s=… lag_p99_s=…
noop_advances=… prom_queries_per_round=… per_rollout_queries_per_round=…
worker_rss_mb=… redis_keys=… metrics_scrape_ms=…``.
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

from controller.lab.scale import FLEETS, run_scale  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs (logs)")
    parser.add_argument(
        "--fleet",
        choices=sorted(FLEETS),
        default="synthetic",
        help="the services: thin synthetic ones (default) or real demo service instances",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="pool processes of each of the two rollouts workers (default layout: 2)",
    )
    args = parser.parse_args()
    for rollouts in args.rollouts:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-scale-{rollouts}-"))
        print(f"work dir {workdir}", flush=True)
        try:
            figures = run_scale(
                workdir,
                rollouts,
                args.window,
                say=lambda line: print(line, flush=True),
                fleet=args.fleet,
                concurrency=args.concurrency,
            )
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        print(figures.line(), flush=True)
        if args.json:
            print(json.dumps(dataclasses.asdict(figures)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
