"""Benchmark: what one worker process spends reading a fleet's range answer.

Every worker process reads every batched answer of every slot from Redis (another
process asked Prometheus for it) and picks, for each rollout it checks, that
rollout's series. A process checks only its share of the rollouts (``--processes``
of them share the fleet). Timed here: decompressing and reading one stored range
answer of ``--rollouts`` services (a canary and a stable series each, a 5-minute
window at 10 s steps) plus picking this process's share, as stored now (columns,
pairs built only for the picked series); and, in the same process on the same
answer, the way it was stored before (a list of [time, value] pairs per series,
every point made a Python pair on reading) as the baseline.

    .venv/bin/python bench/shared_answer_read.py [--rollouts 100 1000] [--points 31]
        [--processes 2] [--repeat 30]

Prints per N ``shared_answer_read rollouts=… stored_kb=… p50_ms=… p95_ms=…
baseline_stored_kb=… baseline_p50_ms=… baseline_p95_ms=… speedup=…``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.analysis.answer_cache import (  # noqa: E402
    CachedAnswer,
    _labels,
    _number,
    decode,
    encode,
)
from controller.analysis.batching import BatchedQuery, SharedAnswer  # noqa: E402
from controller.metrics.prometheus import Series  # noqa: E402


def fleet_answer(rollouts: int, points: int) -> CachedAnswer:
    start = 1_790_000_000.0
    series = [
        Series(
            {"service": f"svc-{i:05d}", "track": track, "job": "fleet"},
            [(start + 10 * k, 0.001 * ((i + k) % 17)) for k in range(points)],
        )
        for i in range(rollouts)
        for track in ("canary", "stable")
    ]
    return CachedAnswer(datetime.now(UTC), [], series)


def baseline_encode(answer: CachedAnswer) -> bytes:
    """The format before columns: each series' points as [time, value] pairs."""
    document = {
        "at": answer.evaluated_at.isoformat(),
        "samples": [],
        "series": [[s.labels, [[t, v] for t, v in s.points]] for s in answer.series],
    }
    return zlib.compress(orjson.dumps(document), 1)


def baseline_read(raw: bytes) -> SharedAnswer:
    """Reading it as it was read: every point checked and made a pair."""
    document = orjson.loads(zlib.decompress(raw))
    series = [
        Series(_labels(labels), [(_number(t), _number(v)) for t, v in points])
        for labels, points in document["series"]
    ]
    return SharedAnswer(datetime.fromisoformat(document["at"]), [], series)


def current_read(raw: bytes) -> SharedAnswer:
    answer = decode(raw)
    return SharedAnswer(answer.evaluated_at, answer.samples, answer.series)


def timed(read: Callable[[bytes], SharedAnswer], raw: bytes, picks: list, repeat: int) -> list:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        answer = read(raw)
        for query in picks:
            answer.picked_series(query)
        times.append((time.perf_counter() - began) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--points", type=int, default=31)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    for rollouts in args.rollouts:
        answer = fleet_answer(rollouts, args.points)
        share = range(0, rollouts, max(1, args.processes))
        picks = [BatchedQuery("q", (("service", f"svc-{i:05d}"),)) for i in share]
        raw, old = encode(answer), baseline_encode(answer)
        now = timed(current_read, raw, picks, args.repeat)
        before = timed(baseline_read, old, picks, args.repeat)
        p50, baseline_p50 = statistics.median(now), statistics.median(before)
        print(
            f"shared_answer_read rollouts={rollouts} stored_kb={len(raw) / 1024:.1f} "
            f"p50_ms={p50:.1f} p95_ms={_p95(now):.1f} "
            f"baseline_stored_kb={len(old) / 1024:.1f} baseline_p50_ms={baseline_p50:.1f} "
            f"baseline_p95_ms={_p95(before):.1f} speedup={baseline_p50 / p50:.1f}",
            flush=True,
        )


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


if __name__ == "__main__":
    main()
