"""Canary histories for the detection benchmark, written as OpenMetrics.

Each scenario is one service's stable and canary metrics over 40 minutes, sampled
every 15 s like a scrape, with the demo service's metric names (so the shipped
standard plan judges them as it is). Requests are Poisson, errors binomial,
latencies log-normal, queue lag a noisy gauge: what real services look like, not
straight lines. A faulty scenario's fault begins at ``FAULT_AT``; what a scenario
must end in is known in advance. ``promtool tsdb create-blocks-from openmetrics``
turns the file into blocks a real Prometheus serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

STEP_S = 15
DURATION_S = 40 * 60
FAULT_AT_S = 12 * 60  # the plan's 5-minute window is all healthy before it
STABLE, CANARY = "1.0.0", "2.0.0"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Expect = Literal["rollback", "continue", "hold"]


@dataclass(frozen=True)
class Scenario:
    """One service's history. Rates are per second; ``*_fault`` values apply to the
    canary from ``FAULT_AT_S`` on (and ``None`` means as before the fault)."""

    name: str
    family: str  # which criterion it is about: 5xx, auth, lag, writes, latency
    expect: Expect  # rollback: faulty; continue: healthy; hold: no data, never promote
    rps_stable: float = 40.0
    rps_canary: float = 10.0
    error_rate: float = 0.005
    error_fault: float | None = None
    auth_rate: float = 0.005
    auth_fault: float | None = None
    write_failure_fault: float | None = None
    lag_level: float = 20.0
    lag_noise: float = 3.0
    lag_slope_fault: float | None = None  # seconds of lag per second
    lag_level_fault: float | None = None
    latency_median_ms: float = 60.0
    tail_share_fault: float | None = None  # share of canary requests in the slow tail
    tail_ms_fault: float = 0.0
    lazy_error_series: bool = False  # error series appear with the first error
    counter_reset_at_s: int | None = None  # the canary restarts: its counters go to 0
    gaps: tuple[tuple[int, int], ...] = ()  # canary scrape gaps [from, to) in seconds
    canary_absent: bool = False  # the canary exposes nothing at all
    seed: int = 1
    notes: str = ""

    @property
    def faulty(self) -> bool:
        return self.expect == "rollback"


@dataclass
class _Counter:
    value: float = 0.0
    born: bool = False


@dataclass
class _Track:
    """Counters of one version while the history is generated."""

    version: str
    requests: dict[str, _Counter] = field(default_factory=dict)
    auth: dict[str, _Counter] = field(default_factory=dict)
    writes: _Counter = field(default_factory=_Counter)
    write_failures: _Counter = field(default_factory=_Counter)
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(LATENCY_BUCKETS) + 1))


def library() -> list[Scenario]:
    """The benchmark's scenarios: every seed criterion at three magnitudes, healthy
    canaries at high and low traffic, and the data problems real services have."""
    found = [
        Scenario("5xx-3x", "5xx", "rollback", error_fault=0.015, seed=11),
        Scenario("5xx-6x", "5xx", "rollback", error_fault=0.03, seed=12),
        Scenario("5xx-40x", "5xx", "rollback", error_fault=0.2, seed=13),
        Scenario(
            "5xx-3x-high-traffic",
            "5xx",
            "rollback",
            rps_canary=100,
            error_fault=0.015,
            seed=14,
            notes="enough traffic for 3x to be significant in one window",
        ),
        Scenario("auth-4pct", "auth", "rollback", auth_fault=0.04, seed=21),
        Scenario("auth-8pct", "auth", "rollback", auth_fault=0.08, seed=22),
        Scenario("auth-30pct", "auth", "rollback", auth_fault=0.3, seed=23),
        Scenario("writes-rare", "writes", "rollback", write_failure_fault=0.0005, seed=31),
        Scenario("writes-some", "writes", "rollback", write_failure_fault=0.005, seed=32),
        Scenario("writes-many", "writes", "rollback", write_failure_fault=0.1, seed=33),
        Scenario("lag-rise-slow", "lag", "rollback", lag_slope_fault=10 / 60, seed=41),
        Scenario("lag-rise", "lag", "rollback", lag_slope_fault=30 / 60, seed=42),
        Scenario("lag-rise-fast", "lag", "rollback", lag_slope_fault=2.0, seed=43),
        Scenario(
            "lag-flat-high", "lag", "rollback", lag_level_fault=420.0, notes="stuck, not rising"
        ),
        Scenario(
            "lag-rise-under-noise",
            "lag",
            "rollback",
            lag_slope_fault=10 / 60,
            lag_noise=10.0,
            seed=44,
        ),
        Scenario(
            "latency-p99-1.8x",
            "latency",
            "rollback",
            tail_share_fault=0.03,
            tail_ms_fault=400,
            seed=51,
        ),
        Scenario("latency-p99-4x", "latency", "rollback", tail_share_fault=0.03, tail_ms_fault=900),
        Scenario(
            "latency-p99-10x",
            "latency",
            "rollback",
            tail_share_fault=0.03,
            tail_ms_fault=2500,
            seed=53,
        ),
        Scenario("healthy-high-traffic", "5xx", "continue", rps_canary=40, seed=61),
        Scenario(
            "healthy-low-traffic",
            "5xx",
            "continue",
            rps_stable=8,
            rps_canary=1.5,
            error_rate=0.01,
            seed=62,
            notes="few requests: a handful of errors is noise",
        ),
        Scenario("healthy-zero-error-baseline", "5xx", "continue", error_rate=0.0, seed=63),
        Scenario(
            "healthy-lazy-error-series",
            "5xx",
            "continue",
            error_rate=0.0,
            auth_rate=0.0,
            lazy_error_series=True,
            seed=64,
        ),
        Scenario("healthy-counter-reset", "5xx", "continue", counter_reset_at_s=20 * 60, seed=65),
        Scenario(
            "healthy-scrape-gaps",
            "5xx",
            "continue",
            gaps=((15 * 60, 18 * 60), (25 * 60, 26 * 60)),
            seed=66,
        ),
        Scenario("healthy-noisy-lag", "lag", "continue", lag_noise=10.0, seed=67),
        Scenario("healthy-latency-noise", "latency", "continue", rps_canary=5, seed=68),
        Scenario(
            "canary-absent",
            "5xx",
            "hold",
            canary_absent=True,
            notes="no canary series at all: never promote",
        ),
    ]
    return found


def openmetrics(scenarios: list[Scenario], end_unix: int) -> str:
    """Every scenario's history ending at ``end_unix``, as one OpenMetrics document
    (one family after the other, each series contiguous in time, as promtool wants)."""
    start = end_unix - DURATION_S
    families: dict[str, tuple[str, list[str]]] = {
        "demo_http_requests": ("counter", []),
        "demo_auth_attempts": ("counter", []),
        "demo_writes": ("counter", []),
        "demo_write_failures": ("counter", []),
        "demo_queue_lag_seconds": ("gauge", []),
        # Buckets as a plain family: histogram_quantile() needs only the _bucket series
        # and their le labels, and promtool reads them without histogram grouping.
        "demo_request_duration_seconds_bucket": ("gauge", []),
    }
    for scenario in scenarios:
        for family, lines in _scenario_lines(scenario, start):
            families[family][1].extend(lines)
    out: list[str] = []
    for family, (kind, lines) in families.items():
        out.append(f"# TYPE {family} {kind}")
        out.extend(lines)
    out.append("# EOF")
    return "\n".join(out) + "\n"


def _scenario_lines(scenario: Scenario, start: int) -> Iterator[tuple[str, list[str]]]:
    series: dict[tuple[str, str], list[str]] = {}
    rng = np.random.default_rng(scenario.seed)
    tracks = {STABLE: _Track(STABLE), CANARY: _Track(CANARY)}
    lag_since_fault = 0.0
    for offset in range(0, DURATION_S + 1, STEP_S):
        at = start + offset
        faulted = offset >= FAULT_AT_S
        for version, track in tracks.items():
            canary = version == CANARY
            if canary and scenario.canary_absent:
                continue
            if canary and offset == scenario.counter_reset_at_s:
                tracks[CANARY] = track = _Track(CANARY)
            _simulate_step(scenario, track, rng, canary, faulted)
            if canary and any(a <= offset < b for a, b in scenario.gaps):
                continue
            labels = f'service="{scenario.name}",version="{version}",environment="production"'
            _emit(series, scenario, track, labels, at)
            if canary and faulted and scenario.lag_slope_fault:
                lag_since_fault += scenario.lag_slope_fault * STEP_S
            lag = _lag(scenario, rng, canary and faulted, lag_since_fault if canary else 0.0)
            series.setdefault(("demo_queue_lag_seconds", labels), []).append(
                f"demo_queue_lag_seconds{{{labels}}} {lag:.3f} {at}"
            )
    by_family: dict[str, list[str]] = {}
    for (family, _labels), lines in series.items():
        by_family.setdefault(family, []).extend(lines)
    yield from by_family.items()


def _simulate_step(
    scenario: Scenario, track: _Track, rng: np.random.Generator, canary: bool, faulted: bool
) -> None:
    rps = scenario.rps_canary if canary else scenario.rps_stable
    requests = int(rng.poisson(rps * STEP_S))
    error_rate = scenario.error_rate
    auth_rate = scenario.auth_rate
    write_failure = 0.0
    if canary and faulted:
        error_rate = scenario.error_fault if scenario.error_fault is not None else error_rate
        auth_rate = scenario.auth_fault if scenario.auth_fault is not None else auth_rate
        write_failure = scenario.write_failure_fault or 0.0
    errors = int(rng.binomial(requests, error_rate))
    auth_failures = int(rng.binomial(requests - errors, auth_rate))
    _add(track.requests, "500", errors)
    _add(track.requests, "200", requests - errors)
    _add(track.auth, "failure", auth_failures)
    _add(track.auth, "success", requests - auth_failures)
    track.writes.value += requests
    track.writes.born = True
    failed_writes = int(rng.binomial(requests, write_failure))
    track.write_failures.value += failed_writes
    track.write_failures.born = track.write_failures.born or failed_writes > 0
    latencies = rng.lognormal(np.log(scenario.latency_median_ms / 1000), 0.35, requests)
    if canary and faulted and scenario.tail_share_fault:
        slow = rng.random(requests) < scenario.tail_share_fault
        latencies[slow] += scenario.tail_ms_fault / 1000
    counts = np.searchsorted(np.array(LATENCY_BUCKETS), latencies, side="left")
    for index in counts:
        track.buckets[int(index)] += 1


def _add(counters: dict[str, _Counter], key: str, amount: int) -> None:
    counter = counters.setdefault(key, _Counter())
    counter.value += amount
    counter.born = counter.born or amount > 0 or key in ("200", "success")


def _emit(
    series: dict[tuple[str, str], list[str]],
    scenario: Scenario,
    track: _Track,
    labels: str,
    at: int,
) -> None:
    def sample(family: str, name: str, extra: str, value: float) -> None:
        full = f"{labels},{extra}" if extra else labels
        series.setdefault((family, full), []).append(f"{name}{{{full}}} {value:g} {at}")

    for code, counter in track.requests.items():
        if counter.born or not scenario.lazy_error_series:
            name = "demo_http_requests_total"
            sample("demo_http_requests", name, f'code="{code}"', counter.value)
    for result, counter in track.auth.items():
        if counter.born or not scenario.lazy_error_series:
            name = "demo_auth_attempts_total"
            sample("demo_auth_attempts", name, f'result="{result}"', counter.value)
    sample("demo_writes", "demo_writes_total", "", track.writes.value)
    if track.write_failures.born or not scenario.lazy_error_series:
        sample("demo_write_failures", "demo_write_failures_total", "", track.write_failures.value)
    cumulative = 0.0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), track.buckets, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        bucket = "demo_request_duration_seconds_bucket"
        sample(bucket, bucket, f'le="{le}"', cumulative)


def _lag(scenario: Scenario, rng: np.random.Generator, faulted: bool, risen: float) -> float:
    level = scenario.lag_level
    if faulted and scenario.lag_level_fault is not None:
        level = scenario.lag_level_fault
    return max(0.0, level + risen + float(rng.normal(0, scenario.lag_noise)))
