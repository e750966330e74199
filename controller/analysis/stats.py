"""The statistics behind the judges, from maintained libraries (scipy, pymannkendall).

Kept apart from the judges so the numbers can be checked against textbook values:
an exact one-sided binomial test for error counts, and a Mann-Kendall trend test
with Sen's slope for series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pymannkendall
from scipy.stats import binom


def counts(errors: float, total: float) -> tuple[int, int]:
    """PromQL ``increase()`` extrapolates, so counts come as floats: the nearest whole
    numbers, errors never above requests."""
    requests = max(int(round(total)), 1)
    return min(max(int(round(errors)), 0), requests), requests


def binomial_excess_p(errors: float, total: float, limit: float) -> float:
    """One-sided p-value of seeing at least ``errors`` failures in ``total`` requests
    if the true failure proportion were ``limit``: small means the canary really fails
    more often than the limit allows, not by the luck of a few requests."""
    failed, requests = counts(errors, total)
    if failed == 0:
        return 1.0
    return float(binom.sf(failed - 1, requests, min(max(limit, 0.0), 1.0)))


@dataclass(frozen=True)
class Trend:
    """A Mann-Kendall test of a series: is it rising, how sure, how fast."""

    p_rising: float  # one-sided p-value of "rising"
    slope_per_step: float  # Sen's slope, in the series' units per point
    tau: float


def mann_kendall(values: Sequence[float]) -> Trend:
    """Mann-Kendall on evenly spaced points (ties and noise handled by the test)."""
    if len(set(values)) == 1:  # a flat line: no trend, and the test would divide by 0
        return Trend(p_rising=1.0, slope_per_step=0.0, tau=0.0)
    result = pymannkendall.original_test(list(values))
    two_sided = float(result.p)
    p_rising = two_sided / 2 if result.z > 0 else 1 - two_sided / 2
    slope = float(result.slope)
    return Trend(
        p_rising=p_rising if math.isfinite(p_rising) else 1.0,
        slope_per_step=slope if math.isfinite(slope) else 0.0,
        tau=float(result.Tau),
    )
