"""Judges: pure functions from measured numbers to a verdict.

They know nothing about Prometheus or the database, so every edge (no data, NaN,
a zero baseline, too little traffic, a counter that went backwards) is a unit test.
Counts are *increases over the window* (PromQL ``increase``), and errors are
compared as proportions of requests, not averages, which is what catches
zero-heavy error counts (the Kayenta Mann-Whitney lesson); a proportion fails on
the evidence (an exact binomial test), not on the point estimate, so a handful of
requests cannot roll back a healthy canary. Trends are Mann-Kendall tests.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from controller.analysis import stats
from controller.analysis.verdict import Judgement, Verdict
from controller.plan import (
    LatencyToBaseline,
    RatioThreshold,
    RatioToBaseline,
    RisingTrend,
    ZeroTolerance,
)


def _missing(name: str, value: float | None) -> str | None:
    """Why a number cannot be used, or None when it can."""
    if value is None:
        return f"no data for {name}"
    if math.isnan(value):
        return f"{name} is NaN"
    if math.isinf(value):
        return f"{name} is infinite"
    if value < 0:
        return f"{name} is negative ({value:g}): a counter reset or a bad query"
    return None


def _first_missing(**values: float | None) -> str | None:
    for name, value in values.items():
        reason = _missing(name, value)
        if reason:
            return reason
    return None


def ratio_to_baseline(
    spec: RatioToBaseline,
    canary_errors: float | None,
    canary_total: float | None,
    baseline_errors: float | None,
    baseline_total: float | None,
    previous_baseline: float | None = None,
) -> Judgement:
    """Canary error proportion above ``factor`` × the baseline's (and above ``floor``).

    When the stable version carries too little traffic to measure (at 100 % it
    carries none), the last conclusive baseline proportion of this rollout is used
    and the reason says so; without one the verdict is inconclusive.
    """
    problem = _first_missing(canary_errors=canary_errors, canary_total=canary_total)
    if problem:
        return Judgement(Verdict.INCONCLUSIVE, problem)
    assert canary_errors is not None and canary_total is not None
    if canary_total < spec.min_requests:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"too little canary traffic: {canary_total:.0f} requests, need {spec.min_requests}",
            details={"canary_total": canary_total},
        )
    if canary_errors > canary_total * 1.05 + 1:
        return Judgement(
            Verdict.INCONCLUSIVE, "more canary errors than requests: check the queries"
        )
    canary_rate = min(canary_errors / canary_total, 1.0)

    baseline_source = "stable over the same window"
    baseline_problem = _first_missing(
        baseline_errors=baseline_errors, baseline_total=baseline_total
    )
    if (
        baseline_problem is None
        and baseline_total is not None
        and baseline_total < spec.min_requests
    ):
        baseline_problem = (
            f"too little stable traffic: {baseline_total:.0f} requests, need {spec.min_requests}"
        )
    if (
        baseline_problem is None
        and baseline_errors is not None
        and baseline_total is not None
        and baseline_errors > baseline_total * 1.05 + 1
    ):
        baseline_problem = "more stable errors than requests: check the queries"
    if baseline_problem is None:
        assert baseline_errors is not None and baseline_total is not None
        baseline_rate: float | None = min(baseline_errors / baseline_total, 1.0)
    elif previous_baseline is not None and not math.isnan(previous_baseline):
        baseline_rate = previous_baseline
        baseline_source = f"last measured stable proportion ({baseline_problem})"
    else:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"no baseline: {baseline_problem}",
            value=canary_rate,
            details={"canary_total": canary_total},
        )

    limit = max(spec.factor * baseline_rate, spec.floor)
    if limit >= 1.0:
        # No canary proportion can exceed the limit: comparing says nothing.
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"the baseline fails {baseline_rate:.4f} of its requests: "
            f"{spec.factor:g} x that leaves nothing the canary could exceed",
            value=canary_rate,
            details={"canary_total": canary_total, "baseline_rate": baseline_rate},
        )
    details = {
        "canary_errors": canary_errors,
        "canary_total": canary_total,
        "baseline_rate": baseline_rate,
        "baseline_errors": baseline_errors,
        "baseline_total": baseline_total,
        "measured_baseline": baseline_rate if baseline_problem is None else None,
    }
    times = f"{canary_rate / baseline_rate:.1f}x" if baseline_rate > 0 else "baseline 0"
    comparison = (
        f"canary 5xx {canary_rate:.4f} vs baseline {baseline_rate:.4f}: {times}, "
        f"limit {limit:.4f} = max({spec.factor:g} x baseline, floor {spec.floor:g}); "
        f"baseline: {baseline_source}"
    )
    return _tested(spec.confidence, canary_errors, canary_total, limit, comparison, details)


def _tested(
    confidence: float,
    errors: float,
    total: float,
    limit: float,
    comparison: str,
    details: dict[str, float | None],
) -> Judgement:
    """Fail on the evidence, not the point estimate: over the limit *and* unlikely to
    be the luck of a few requests (one-sided exact binomial test). Over the limit but
    not that sure is inconclusive: hold and measure again, neither promote nor roll
    back. 2 errors in 50 requests against a 2 % limit is p=0.26: no rollback."""
    rate = min(errors / total, 1.0)
    alpha = 1 - confidence
    if rate <= limit:
        return Judgement(Verdict.PASS, comparison, value=rate, limit=limit, details=details)
    p_value = stats.binomial_excess_p(errors, total, limit)
    details = {**details, "p_value": p_value, "alpha": alpha}
    failed, requests = stats.counts(errors, total)
    evidence = f"{failed} of {requests} requests, p={p_value:.2g}"
    if p_value < alpha:
        return Judgement(
            Verdict.FAIL,
            f"{comparison}; {evidence} < {alpha:g}",
            value=rate,
            limit=limit,
            details=details,
        )
    return Judgement(
        Verdict.INCONCLUSIVE,
        f"{comparison}; over the limit but not yet significant: {evidence} >= {alpha:g}",
        value=rate,
        limit=limit,
        details=details,
    )


def ratio_threshold(spec: RatioThreshold, errors: float | None, total: float | None) -> Judgement:
    """A proportion of requests above a fixed limit (authentication failures > 2 %)."""
    problem = _first_missing(errors=errors, total=total)
    if problem:
        return Judgement(Verdict.INCONCLUSIVE, problem)
    assert errors is not None and total is not None
    if total < spec.min_requests:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"too little traffic: {total:.0f} requests, need {spec.min_requests}",
            details={"total": total},
        )
    if errors > total * 1.05 + 1:
        return Judgement(Verdict.INCONCLUSIVE, "more errors than requests: check the queries")
    ratio = min(errors / total, 1.0)
    return _tested(
        spec.confidence,
        errors,
        total,
        spec.max_ratio,
        f"proportion {ratio:.4f} vs limit {spec.max_ratio:g} over {total:.0f} requests",
        {"errors": errors, "total": total},
    )


def rising_trend(
    spec: RisingTrend, points: Sequence[tuple[float, float]] | None, step_seconds: float
) -> Judgement:
    """Fails when the series rises over the window by a Mann-Kendall test (one-sided
    p below 1 - confidence) at Sen's slope of at least ``min_slope`` per second and
    ``min_rise`` over the window; or, with a ``ceiling``, when its median is above it,
    flat or not. Noise on a flat series is no trend; a dip every few steps does not
    hide one."""
    if not points:
        return Judgement(Verdict.INCONCLUSIVE, "no data for series")
    ordered = sorted(points)
    values = [v for _, v in ordered if not math.isnan(v) and not math.isinf(v)]
    if len(values) < spec.min_points:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"only {len(values)} usable points, need {spec.min_points}",
            details={"points": float(len(values))},
        )
    median = statistics.median(values)
    if spec.ceiling is not None and median > spec.ceiling:
        return Judgement(
            Verdict.FAIL,
            f"median {median:.3g} over the window is above the ceiling {spec.ceiling:g} "
            f"(last value {values[-1]:.3g})",
            value=median,
            limit=spec.ceiling,
            details={"median": median, "last": values[-1]},
        )
    trend = stats.mann_kendall(values)
    slope = trend.slope_per_step / step_seconds
    span = ordered[-1][0] - ordered[0][0]
    rise = slope * span
    alpha = 1 - spec.confidence
    rising = trend.p_rising < alpha and slope >= spec.min_slope and rise > spec.min_rise
    return Judgement(
        Verdict.FAIL if rising else Verdict.PASS,
        f"Mann-Kendall p={trend.p_rising:.2g} (rising when < {alpha:g}), Sen's slope "
        f"{slope:+.3g}/s (min {spec.min_slope:g}), rise over the window {rise:+.3g} "
        f"(min {spec.min_rise:g}), last value {values[-1]:.3g}",
        value=rise,
        limit=spec.min_rise,
        details={
            "p_value": trend.p_rising,
            "slope_per_second": slope,
            "tau": trend.tau,
            "median": median,
            "first": values[0],
            "last": values[-1],
        },
    )


def latency_to_baseline(
    spec: LatencyToBaseline,
    canary_seconds: float | None,
    baseline_seconds: float | None,
    previous_baseline: float | None = None,
) -> Judgement:
    """A latency quantile of the canary above ``factor`` x the stable version's and
    above ``floor_ms``. ``histogram_quantile`` over a window without requests is NaN:
    no data. Without a stable measurement (at 100 % it has no traffic) the last one of
    this rollout stands in, and the reason says so."""
    problem = _missing("canary latency", canary_seconds)
    if problem:
        return Judgement(Verdict.INCONCLUSIVE, problem)
    assert canary_seconds is not None
    canary_ms = canary_seconds * 1000
    baseline_problem = _missing("baseline latency", baseline_seconds)
    source = "stable over the same window"
    if baseline_problem is None:
        assert baseline_seconds is not None
        baseline_ms: float = baseline_seconds * 1000
    elif previous_baseline is not None and math.isfinite(previous_baseline):
        baseline_ms = previous_baseline
        source = f"last measured stable {spec.quantile} ({baseline_problem})"
    else:
        return Judgement(Verdict.INCONCLUSIVE, f"no baseline: {baseline_problem}", value=canary_ms)
    limit = max(spec.factor * baseline_ms, spec.floor_ms)
    times = f"{canary_ms / baseline_ms:.1f}x" if baseline_ms > 0 else "baseline 0"
    return Judgement(
        Verdict.FAIL if canary_ms > limit else Verdict.PASS,
        f"canary {spec.quantile} {canary_ms:.1f} ms vs baseline {baseline_ms:.1f} ms: {times}, "
        f"limit {limit:.1f} ms = max({spec.factor:g} x baseline, floor {spec.floor_ms:g} ms); "
        f"baseline: {source}",
        value=canary_ms,
        limit=limit,
        details={
            "baseline_ms": baseline_ms,
            "measured_baseline": baseline_ms if baseline_problem is None else None,
        },
    )


def zero_tolerance(spec: ZeroTolerance, failures: float | None, total: float | None) -> Judgement:
    """Any failed write above ``max`` trips at once, whatever the traffic. Zero failures
    only pass when there was traffic enough (if a ``total`` query is given)."""
    problem = _missing("failures", failures)
    if problem:
        return Judgement(Verdict.INCONCLUSIVE, problem)
    assert failures is not None
    if failures > spec.max:
        return Judgement(
            Verdict.FAIL,
            f"{failures:.3g} failures in the window, limit {spec.max:g}",
            value=failures,
            limit=spec.max,
        )
    if spec.total is not None:
        total_problem = _missing("total", total)
        if total_problem:
            return Judgement(Verdict.INCONCLUSIVE, total_problem, value=failures)
        assert total is not None
        if total < spec.min_requests:
            return Judgement(
                Verdict.INCONCLUSIVE,
                f"too little traffic: {total:.0f} requests, need {spec.min_requests}",
                value=failures,
                details={"total": total},
            )
    return Judgement(
        Verdict.PASS,
        f"{failures:.3g} failures in the window, limit {spec.max:g}",
        value=failures,
        limit=spec.max,
        details={"total": total},
    )
