"""Batched queries answer each rollout exactly as its own queries do, on real Prometheus.

Four services' history (the demo plan's metrics: request counters with lazily created
error series, auth attempts, writes, a queue-lag gauge and a latency histogram) is
backfilled into a real Prometheus. Every stop criterion of the demo plan is measured
for each service twice at the same evaluation time: with its own queries, and through
shared answers of batched queries. The numbers, verdicts and reasons must be equal,
and the batched path must ask Prometheus once per distinct query, not once per
rollout.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config import PLANS_DIR
from controller.analysis.answer_cache import RedisAnswerCache
from controller.analysis.batching import SharedAnswers
from controller.analysis.runner import measure
from controller.lab.redis import ensure_redis
from controller.metrics import PrometheusProvider
from controller.metrics.prometheus import Sample, Series
from controller.plan_loader import load_plan
from tests.integration.prometheus_history import PrometheusProcess, backfill, start_prometheus

pytestmark = pytest.mark.integration

STEP = 15
HISTORY = timedelta(minutes=30)
WINDOW = timedelta(minutes=5)
INTERVAL = timedelta(seconds=10)
STABLE, CANARY = "1.0.0", "1.1.0"
BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1", "+Inf")


@dataclass(frozen=True)
class Track:
    """One version of one service in one environment, and how it behaves per step."""

    service: str
    version: str
    environment: str
    requests: int = 10
    errors: int | None = None  # None: the 5xx series never appears (lazy counters)
    auth_failures: int = 0
    write_failures: int = 0
    lag_rise: float = 0.0
    slow: bool = False

    @property
    def labels(self) -> str:
        return f'service="{self.service}",version="{self.version}",environment="{self.environment}"'


TRACKS = [
    Track("svc-a", STABLE, "production"),
    Track("svc-a", CANARY, "production"),  # healthy, no error series at all
    Track("svc-b", STABLE, "production", errors=0),
    Track("svc-b", CANARY, "production", errors=4, auth_failures=3),
    Track("svc-c", STABLE, "production"),
    Track("svc-c", CANARY, "production", lag_rise=2.0, slow=True, write_failures=1),
    Track("svc-d", STABLE, "production"),
    Track("svc-d", CANARY, "staging", errors=1),  # in its staging soak...
    Track("svc-d", CANARY, "production", errors=9, slow=True),  # ...not judged on these
]
ROLLOUTS = {"svc-a": "production", "svc-b": "production", "svc-c": "production"}
ROLLOUTS["svc-d"] = "staging"


def history_openmetrics(start: int, end: int) -> str:
    """Every track's series every STEP seconds over [start, end], as OpenMetrics (each
    series contiguous and in time order, a histogram's buckets together per time)."""
    times = list(range(start, end + 1, STEP))
    lines = ["# TYPE demo_http_requests counter"]
    for track in TRACKS:
        lines += [
            f'demo_http_requests_total{{{track.labels},code="200"}} {i * track.requests} {t}'
            for i, t in enumerate(times)
        ]
        if track.errors is not None:
            lines += [
                f'demo_http_requests_total{{{track.labels},code="500"}} {i * track.errors} {t}'
                for i, t in enumerate(times)
            ]
    lines.append("# TYPE demo_auth_attempts counter")
    for track in TRACKS:
        for result, per_step in (("success", track.requests), ("failure", track.auth_failures)):
            lines += [
                f'demo_auth_attempts_total{{{track.labels},result="{result}"}} {i * per_step} {t}'
                for i, t in enumerate(times)
            ]
    for family, per_step in (("demo_writes", "requests"), ("demo_write_failures", None)):
        lines.append(f"# TYPE {family} counter")
        for track in TRACKS:
            count = track.requests if per_step else track.write_failures
            lines += [
                f"{family}_total{{{track.labels}}} {i * count} {t}" for i, t in enumerate(times)
            ]
    lines.append("# TYPE demo_queue_lag_seconds gauge")
    for track in TRACKS:
        lines += [
            f"demo_queue_lag_seconds{{{track.labels}}} {1 + i * track.lag_rise:g} {t}"
            for i, t in enumerate(times)
        ]
    lines.append("# TYPE demo_request_duration_seconds histogram")
    for track in TRACKS:
        # Fast tracks answer under 50 ms; slow ones between 250 and 500 ms.
        below = {le: (0 if track.slow and le in ("0.05", "0.1", "0.25") else 1) for le in BUCKETS}
        for i, t in enumerate(times):
            n = i * track.requests
            lines += [
                f'demo_request_duration_seconds_bucket{{{track.labels},le="{le}"}} '
                f"{n * below[le]} {t}"
                for le in BUCKETS
            ]
            lines.append(f"demo_request_duration_seconds_count{{{track.labels}}} {n} {t}")
            lines.append(f"demo_request_duration_seconds_sum{{{track.labels}}} {n * 0.3:g} {t}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class CountingProvider:
    """The real provider, counting the requests it sends."""

    def __init__(self, provider: PrometheusProvider) -> None:
        self.provider = provider
        self.requests = 0

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        self.requests += 1
        return self.provider.instant(query, at=at)

    def range(self, query: str, start: datetime, end: datetime, step: float) -> list[Series]:
        self.requests += 1
        return self.provider.range(query, start, end, step)


@dataclass(frozen=True)
class History:
    prometheus: PrometheusProcess
    end: datetime


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    workdir = tmp_path_factory.mktemp("batched-history")
    end = int(time.time()) // 60 * 60 - 60  # a whole minute: the start of a batching slot
    start = end - int(HISTORY.total_seconds())
    prom = start_prometheus(workdir, backfill(workdir, history_openmetrics(start, end)))
    try:
        yield History(prom, datetime.fromtimestamp(end, UTC))
    finally:
        prom.stop()


def same_number(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("through_redis", [False, True], ids=["one-process", "through-redis"])
def test_batched_answers_are_each_rollouts_own(
    history: History, through_redis: bool, tmp_path: Path
) -> None:
    """``through-redis``: another worker process asked every batched query and this
    one reads its answers from a real Redis (compressed, decoded, checked); the
    numbers, lazily absent error series included, must still be each rollout's."""
    plan = load_plan(PLANS_DIR / "demo.yaml")
    with PrometheusProvider(history.prometheus.url, timeout_seconds=10.0) as real:
        own, batched, reading = CountingProvider(real), CountingProvider(real), None
        shared = first = SharedAnswers(batched)
        if through_redis:
            redis_server = ensure_redis(tmp_path, db=7)
            fleet = RedisAnswerCache.from_url(redis_server.url, secrets.token_hex(6), 10.0)
            first = SharedAnswers(batched, fleet=fleet)
            reading = CountingProvider(real)
            shared = SharedAnswers(reading, fleet=fleet)
        verdicts: dict[tuple[str, str], str] = {}
        for service, environment in ROLLOUTS.items():
            values = {
                "service": service,
                "canary_version": CANARY,
                "stable_version": STABLE,
                "environment": environment,
            }
            for criterion in plan.stop_criteria:
                alone = measure(criterion, own, values, WINDOW, history.end)
                checked = history.end + timedelta(seconds=3)
                if through_redis:  # the other process asks first, and stores
                    measure(
                        criterion, own, values, WINDOW, checked, shared=first, interval=INTERVAL
                    )
                # Checked 3 s into the slot: the shared answer is the slot start's.
                together = measure(
                    criterion,
                    own,
                    values,
                    WINDOW,
                    checked,
                    shared=shared,
                    interval=INTERVAL,
                )
                where = f"{service} {criterion.name}"
                assert together.batched_at == history.end, where
                assert set(together.batched_roles) == set(criterion.queries()), where
                assert alone.inputs.keys() == together.inputs.keys(), where
                for role, value in alone.inputs.items():
                    assert same_number(value, together.inputs[role]), (where, role)
                assert alone.verdict == together.verdict, where
                assert alone.judgement.reason == together.judgement.reason, where
                verdicts[(service, criterion.name)] = alone.verdict.value
    # The history exercises passing, failing and inconclusive judgements alike.
    assert verdicts[("svc-a", "http_5xx_vs_baseline")] == "pass"
    assert verdicts[("svc-b", "http_5xx_vs_baseline")] == "fail"
    assert verdicts[("svc-b", "auth_failures")] == "fail"
    assert verdicts[("svc-c", "queue_lag_rising")] == "fail"
    assert verdicts[("svc-c", "latency_p95_vs_baseline")] == "fail"
    assert verdicts[("svc-c", "failed_writes")] == "fail"
    assert verdicts[("svc-a", "queue_lag_rising")] == "pass"
    queries_per_check = sum(len(c.queries()) for c in plan.stop_criteria)
    assert own.requests == queries_per_check * len(ROLLOUTS)  # the batched path asked none
    distinct = {c.queries()[role] for c in plan.stop_criteria for role in c.queries()}
    # svc-d's canary is in staging: its environment matcher is lifted like the others.
    assert first.asked == batched.requests == len(distinct)
    if reading is not None:
        assert reading.requests == shared.asked == 0  # every answer read from Redis
