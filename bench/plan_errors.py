"""Benchmark: how long refusing a hostile plan takes, and how much memory.

Two shapes issue 29 measured: a plan with 24,000 unknown keys (each problem's line
was found by scanning its mapping: 11.3 s), and a query of 3,990 ``-`` signs and an
``x`` (1.27 GB in the PromQL parser before the shape guard). Each is validated as
``canary plan validate`` does (``parse_plan``) and must be refused; the time is the
median of ``--repeat`` runs, the memory the process's peak resident set.

    .venv/bin/python bench/plan_errors.py [--keys 24000] [--repeat 3]

Prints ``plan_errors unknown_keys=… problems_shown=… p50_s=…`` and
``plan_errors hostile_query=signs p50_ms=… peak_rss_mb=…``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import PLANS_DIR  # noqa: E402
from controller.plan_loader import PlanError, parse_plan  # noqa: E402

DEMO = (PLANS_DIR / "demo.yaml").read_text()


def refusal_seconds(text: str) -> tuple[float, int]:
    """Seconds to refuse ``text`` and how many problems were shown."""
    started = time.perf_counter()
    try:
        parse_plan(text, source="bench.yaml")
    except PlanError as exc:
        return time.perf_counter() - started, len(exc.problems)
    raise SystemExit("the plan loaded: nothing to measure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=24_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    unknown = DEMO + "".join(f"x_{i:05d}: 1\n" for i in range(args.keys))
    runs = [refusal_seconds(unknown) for _ in range(args.repeat)]
    print(
        f"plan_errors unknown_keys={args.keys} problems_shown={runs[0][1]} "
        f"p50_s={statistics.median(s for s, _ in runs):.2f}"
    )

    data = yaml.safe_load(DEMO)
    data["stop_criteria"][0]["canary_errors"] = "-" * 3990 + "x"
    signs = yaml.safe_dump(data, sort_keys=False)
    times = [refusal_seconds(signs)[0] for _ in range(args.repeat)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"plan_errors hostile_query=signs p50_ms={statistics.median(times) * 1000:.1f} "
        f"peak_rss_mb={peak_mb:.0f}"
    )


if __name__ == "__main__":
    main()
