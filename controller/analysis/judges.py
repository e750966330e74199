"""Judges: pure functions from measured numbers to a verdict.

They know nothing about Prometheus or the database, so every edge (no data, NaN,
a zero baseline, too little traffic, a counter that went backwards) is a unit test.
Counts are *increases over the window* (PromQL ``increase``), and errors are
compared as proportions of requests, not averages, which is what catches
zero-heavy error counts (the Kayenta Mann-Whitney lesson).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from controller.analysis.verdict import Judgement, Verdict
from controller.plan import RatioThreshold, RatioToBaseline, RisingTrend, ZeroTolerance


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
    comparison = (
        f"canary 5xx proportion {canary_rate:.4f} vs limit {limit:.4f} "
        f"(max({spec.factor:g} x baseline {baseline_rate:.4f}, floor {spec.floor:g}); "
        f"baseline: {baseline_source})"
    )
    verdict = Verdict.FAIL if canary_rate > limit else Verdict.PASS
    return Judgement(verdict, comparison, value=canary_rate, limit=limit, details=details)


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
    verdict = Verdict.FAIL if ratio > spec.max_ratio else Verdict.PASS
    return Judgement(
        verdict,
        f"proportion {ratio:.4f} vs limit {spec.max_ratio:g} over {total:.0f} requests",
        value=ratio,
        limit=spec.max_ratio,
        details={"errors": errors, "total": total},
    )


def rising_trend(spec: RisingTrend, points: Sequence[tuple[float, float]] | None) -> Judgement:
    """Fails when the series keeps going up across the window: most steps rise, and
    the net rise is above ``min_rise``. One high value is not a trend."""
    if not points:
        return Judgement(Verdict.INCONCLUSIVE, "no data for series")
    values = [v for _, v in sorted(points) if not math.isnan(v) and not math.isinf(v)]
    if len(values) < spec.min_points:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"only {len(values)} usable points, need {spec.min_points}",
            details={"points": float(len(values))},
        )
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    rising = sum(1 for d in steps if d > 0) / len(steps)
    net_rise = values[-1] - values[0]
    trending = rising >= spec.rising_fraction and net_rise > spec.min_rise
    return Judgement(
        Verdict.FAIL if trending else Verdict.PASS,
        f"{rising:.0%} of {len(steps)} steps rose (limit {spec.rising_fraction:.0%}), "
        f"net change {net_rise:+.3g} (limit {spec.min_rise:g}), last value {values[-1]:.3g}",
        value=net_rise,
        limit=spec.min_rise,
        details={"rising_fraction": rising, "first": values[0], "last": values[-1]},
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
