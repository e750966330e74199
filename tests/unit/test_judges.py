"""Each judge at its edges: no data, NaN, zero baseline, low traffic, counter resets."""

import math

import pytest

from controller.analysis.judges import (
    ratio_threshold,
    ratio_to_baseline,
    rising_trend,
    zero_tolerance,
)
from controller.analysis.verdict import Verdict
from controller.plan import RatioThreshold, RatioToBaseline, RisingTrend, ZeroTolerance

NAN = float("nan")
Q = "sum(x)"


def five_xx(**overrides: object) -> RatioToBaseline:
    fields = {
        "name": "5xx",
        "judge": "ratio_to_baseline",
        "canary_errors": Q,
        "canary_total": Q,
        "baseline_errors": Q,
        "baseline_total": Q,
        "factor": 2,
        "floor": 0.01,
        "min_requests": 100,
        **overrides,
    }
    return RatioToBaseline.model_validate(fields)


AUTH = RatioThreshold.model_validate(
    {
        "name": "auth",
        "judge": "ratio_threshold",
        "errors": Q,
        "total": Q,
        "max_ratio": 0.02,
        "min_requests": 100,
    }
)
LAG = RisingTrend.model_validate(
    {
        "name": "lag",
        "judge": "rising_trend",
        "series": Q,
        "min_points": 5,
        "rising_fraction": 0.9,
        "min_rise": 1.0,
    }
)
WRITES = ZeroTolerance.model_validate(
    {"name": "writes", "judge": "zero_tolerance", "failures": Q, "total": Q, "min_requests": 10}
)


class TestRatioToBaseline:
    def test_passes_at_twice_the_baseline_and_fails_just_above(self) -> None:
        at_limit = ratio_to_baseline(five_xx(), 100, 1000, 50, 1000)  # 10 % vs 2 x 5 %
        above = ratio_to_baseline(five_xx(), 101, 1000, 50, 1000)
        assert at_limit.verdict == Verdict.PASS and at_limit.limit == pytest.approx(0.1)
        assert above.verdict == Verdict.FAIL and above.value == pytest.approx(0.101)

    def test_zero_baseline_uses_the_floor_so_one_error_does_not_trip(self) -> None:
        one_error = ratio_to_baseline(five_xx(), 1, 1000, 0, 1000)
        assert one_error.verdict == Verdict.PASS
        assert one_error.limit == pytest.approx(0.01)
        assert ratio_to_baseline(five_xx(), 11, 1000, 0, 1000).verdict == Verdict.FAIL

    @pytest.mark.parametrize(
        ("canary", "reason"),
        [
            ((None, None), "no data"),
            ((NAN, 1000), "NaN"),
            ((5, NAN), "NaN"),
            ((5, math.inf), "infinite"),
            ((-3, 1000), "counter reset"),
        ],
    )
    def test_missing_or_broken_canary_data_is_inconclusive(self, canary, reason) -> None:
        j = ratio_to_baseline(five_xx(), *canary, 0, 1000)
        assert j.verdict == Verdict.INCONCLUSIVE and reason in j.reason

    def test_too_little_canary_traffic_is_inconclusive_even_when_all_fail(self) -> None:
        j = ratio_to_baseline(five_xx(), 99, 99, 0, 1000)
        assert j.verdict == Verdict.INCONCLUSIVE and "need 100" in j.reason

    def test_more_errors_than_requests_is_inconclusive(self) -> None:
        assert ratio_to_baseline(five_xx(), 500, 200, 0, 1000).verdict == Verdict.INCONCLUSIVE

    def test_no_baseline_traffic_uses_the_last_measured_baseline(self) -> None:
        j = ratio_to_baseline(five_xx(), 30, 1000, 0, 0, previous_baseline=0.02)
        assert j.verdict == Verdict.PASS and j.limit == pytest.approx(0.04)
        assert "last measured" in j.reason
        assert j.details["measured_baseline"] is None

    def test_no_baseline_at_all_is_inconclusive(self) -> None:
        j = ratio_to_baseline(five_xx(), 500, 1000, None, None)
        assert j.verdict == Verdict.INCONCLUSIVE and "no baseline" in j.reason

    def test_a_broken_baseline_never_passes_a_failing_canary(self) -> None:
        # More stable errors than requests: the queries are wrong, not the canary right.
        j = ratio_to_baseline(five_xx(), 1000, 1000, 5000, 1000)
        assert j.verdict == Verdict.INCONCLUSIVE and "more stable errors" in j.reason

    def test_a_baseline_failing_half_its_requests_leaves_nothing_to_compare(self) -> None:
        j = ratio_to_baseline(five_xx(), 1000, 1000, 500, 1000)  # limit 2 x 0.5 = 1
        assert j.verdict == Verdict.INCONCLUSIVE and "nothing the canary could exceed" in j.reason
        assert ratio_to_baseline(five_xx(), 1000, 1000, 499, 1000).verdict == Verdict.FAIL

    def test_measured_baseline_is_reported_for_later_checks(self) -> None:
        j = ratio_to_baseline(five_xx(), 0, 1000, 30, 1000)
        assert j.details["measured_baseline"] == pytest.approx(0.03)


class TestRatioThreshold:
    def test_two_percent_passes_and_just_above_fails(self) -> None:
        assert ratio_threshold(AUTH, 20, 1000).verdict == Verdict.PASS
        failed = ratio_threshold(AUTH, 21, 1000)
        assert failed.verdict == Verdict.FAIL and failed.value == pytest.approx(0.021)

    @pytest.mark.parametrize(
        ("errors", "total"), [(None, 1000), (0, None), (NAN, 1000), (-1, 1000), (5, 50)]
    )
    def test_no_data_nan_reset_low_traffic_are_inconclusive(self, errors, total) -> None:
        assert ratio_threshold(AUTH, errors, total).verdict == Verdict.INCONCLUSIVE

    def test_zero_requests_is_not_a_pass(self) -> None:
        assert ratio_threshold(AUTH, 0, 0).verdict == Verdict.INCONCLUSIVE


class TestRisingTrend:
    def test_steady_rise_fails(self) -> None:
        points = [(t, 10.0 + 2 * t) for t in range(10)]
        j = rising_trend(LAG, points)
        assert j.verdict == Verdict.FAIL and j.value == pytest.approx(18)

    def test_one_high_value_is_not_a_trend(self) -> None:
        points = [(t, 1.0) for t in range(9)] + [(9, 500.0)]
        assert rising_trend(LAG, points).verdict == Verdict.PASS

    def test_noisy_flat_series_passes(self) -> None:
        values = [1.0, 1.2, 0.9, 1.1, 0.8, 1.3, 1.0, 1.2, 0.9, 1.1]
        assert rising_trend(LAG, list(enumerate(values))).verdict == Verdict.PASS

    def test_tiny_rise_below_min_rise_passes(self) -> None:
        points = [(t, 1.0 + 0.05 * t) for t in range(10)]
        assert rising_trend(LAG, points).verdict == Verdict.PASS

    def test_rise_with_a_dip_still_counts_at_ninety_percent(self) -> None:
        values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 11.5, 13, 14, 15, 16, 17, 18, 19, 20]
        assert rising_trend(LAG, list(enumerate(values))).verdict == Verdict.FAIL

    def test_unsorted_points_are_sorted_by_time(self) -> None:
        points = [(t, float(t)) for t in range(10)][::-1]
        assert rising_trend(LAG, points).verdict == Verdict.FAIL

    @pytest.mark.parametrize(
        "points", [None, [], [(0, 1.0), (1, 2.0)], [(t, NAN) for t in range(10)]]
    )
    def test_too_few_usable_points_is_inconclusive(self, points) -> None:
        assert rising_trend(LAG, points).verdict == Verdict.INCONCLUSIVE


class TestZeroTolerance:
    def test_any_failure_fails_even_at_low_traffic(self) -> None:
        j = zero_tolerance(WRITES, 1, 2)
        assert j.verdict == Verdict.FAIL and j.limit == 0

    def test_zero_failures_with_traffic_passes(self) -> None:
        assert zero_tolerance(WRITES, 0, 500).verdict == Verdict.PASS

    @pytest.mark.parametrize(
        ("failures", "total"), [(None, 500), (NAN, 500), (0, None), (0, 3), (0, NAN), (-2, 500)]
    )
    def test_silence_is_not_a_pass(self, failures, total) -> None:
        assert zero_tolerance(WRITES, failures, total).verdict == Verdict.INCONCLUSIVE

    def test_without_a_total_query_zero_passes(self) -> None:
        spec = ZeroTolerance.model_validate({"name": "w", "judge": "zero_tolerance", "failures": Q})
        assert zero_tolerance(spec, 0, None).verdict == Verdict.PASS


class ExplodingProvider:
    """A metrics provider with a bug in it (not a Prometheus error)."""

    def instant(self, query: str, at: object = None) -> list:
        raise ValueError("unexpected shape")

    def range(self, query: str, start: object, end: object, step: float) -> list:
        raise ValueError("unexpected shape")


@pytest.mark.parametrize("criterion", [five_xx(), LAG])
def test_a_failure_inside_a_measurement_is_an_error_never_a_crash_or_a_pass(criterion) -> None:
    from datetime import UTC, datetime, timedelta

    from controller.analysis.runner import measure

    found = measure(criterion, ExplodingProvider(), {}, timedelta(minutes=1), datetime.now(UTC))
    assert found.judgement.verdict == Verdict.ERROR
    assert "measurement failed: ValueError: unexpected shape" in found.judgement.reason
