"""Each judge at its edges: no data, NaN, zero baseline, low traffic, counter resets."""

import math
import random

import pytest
from pydantic import ValidationError

from controller.analysis.judges import (
    latency_to_baseline,
    ratio_threshold,
    ratio_to_baseline,
    rising_trend,
    zero_tolerance,
)
from controller.analysis.verdict import Verdict
from controller.plan import (
    LatencyToBaseline,
    RatioThreshold,
    RatioToBaseline,
    RisingTrend,
    ZeroTolerance,
)

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
        "min_rise": 1.0,
    }
)
LATENCY = LatencyToBaseline.model_validate(
    {
        "name": "p99",
        "judge": "latency_to_baseline",
        "canary_latency": Q,
        "baseline_latency": Q,
        "factor": 1.5,
        "floor_ms": 100,
    }
)
WRITES = ZeroTolerance.model_validate(
    {"name": "writes", "judge": "zero_tolerance", "failures": Q, "total": Q, "min_requests": 10}
)


class TestRatioToBaseline:
    def test_at_the_limit_passes_just_above_waits_clearly_above_fails(self) -> None:
        at_limit = ratio_to_baseline(five_xx(), 100, 1000, 50, 1000)  # 10 % vs 2 x 5 %
        just_above = ratio_to_baseline(five_xx(), 101, 1000, 50, 1000)
        clearly = ratio_to_baseline(five_xx(), 160, 1000, 50, 1000)
        assert at_limit.verdict == Verdict.PASS and at_limit.limit == pytest.approx(0.1)
        assert just_above.verdict == Verdict.INCONCLUSIVE and "not yet significant" in (
            just_above.reason
        )
        assert clearly.verdict == Verdict.FAIL and clearly.value == pytest.approx(0.16)
        assert clearly.details["p_value"] < 0.01

    def test_two_errors_in_fifty_requests_do_not_roll_back_a_healthy_canary(self) -> None:
        j = ratio_to_baseline(five_xx(min_requests=50), 2, 50, 100, 10000)  # 4 % vs 2 x 1 %
        assert j.verdict == Verdict.INCONCLUSIVE
        assert "p=0.26" in j.reason

    def test_three_times_the_baseline_with_enough_traffic_fails_and_says_why(self) -> None:
        j = ratio_to_baseline(five_xx(), 60, 2000, 100, 10000)  # 3 % vs 1 %
        assert j.verdict == Verdict.FAIL
        assert j.reason.startswith("canary 5xx 0.0300 vs baseline 0.0100: 3.0x")
        assert "60 of 2000 requests, p=0.0017 < 0.01" in j.reason
        assert j.details["p_value"] == pytest.approx(0.00169, rel=0.01)

    def test_confidence_is_the_plans(self) -> None:
        loose = five_xx(confidence=0.6)
        assert ratio_to_baseline(loose, 110, 1000, 50, 1000).verdict == Verdict.FAIL
        assert ratio_to_baseline(five_xx(), 110, 1000, 50, 1000).verdict == Verdict.INCONCLUSIVE

    def test_zero_baseline_uses_the_floor_so_one_error_does_not_trip(self) -> None:
        one_error = ratio_to_baseline(five_xx(), 1, 1000, 0, 1000)
        assert one_error.verdict == Verdict.PASS
        assert one_error.limit == pytest.approx(0.01)
        assert ratio_to_baseline(five_xx(), 25, 1000, 0, 1000).verdict == Verdict.FAIL

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
        assert ratio_to_baseline(five_xx(), 1000, 1000, 300, 1000).verdict == Verdict.FAIL

    def test_measured_baseline_is_reported_for_later_checks(self) -> None:
        j = ratio_to_baseline(five_xx(), 0, 1000, 30, 1000)
        assert j.details["measured_baseline"] == pytest.approx(0.03)


class TestRatioThreshold:
    def test_two_percent_passes_just_above_waits_twice_fails(self) -> None:
        assert ratio_threshold(AUTH, 20, 1000).verdict == Verdict.PASS
        assert ratio_threshold(AUTH, 21, 1000).verdict == Verdict.INCONCLUSIVE
        failed = ratio_threshold(AUTH, 40, 1000)
        assert failed.verdict == Verdict.FAIL and failed.value == pytest.approx(0.04)

    @pytest.mark.parametrize(
        ("errors", "total"), [(None, 1000), (0, None), (NAN, 1000), (-1, 1000), (5, 50)]
    )
    def test_no_data_nan_reset_low_traffic_are_inconclusive(self, errors, total) -> None:
        assert ratio_threshold(AUTH, errors, total).verdict == Verdict.INCONCLUSIVE

    def test_zero_requests_is_not_a_pass(self) -> None:
        assert ratio_threshold(AUTH, 0, 0).verdict == Verdict.INCONCLUSIVE


def trend(spec: RisingTrend, points) -> object:  # type: ignore[no-untyped-def]
    return rising_trend(spec, points, step_seconds=1.0)


class TestRisingTrend:
    def test_steady_rise_fails(self) -> None:
        points = [(t, 10.0 + 2 * t) for t in range(10)]
        j = trend(LAG, points)
        assert j.verdict == Verdict.FAIL and j.value == pytest.approx(18)
        assert "Mann-Kendall p=" in j.reason and "Sen's slope +2/s" in j.reason

    def test_one_high_value_is_not_a_trend(self) -> None:
        points = [(t, 1.0) for t in range(9)] + [(9, 500.0)]
        assert trend(LAG, points).verdict == Verdict.PASS

    def test_noisy_flat_series_passes(self) -> None:
        values = [1.0, 1.2, 0.9, 1.1, 0.8, 1.3, 1.0, 1.2, 0.9, 1.1]
        assert trend(LAG, list(enumerate(values))).verdict == Verdict.PASS

    def test_noise_on_a_flat_series_never_trips_it(self) -> None:
        rng = random.Random(11)
        tripped = 0
        for _ in range(200):
            values = [30 + rng.gauss(0, 10) for _ in range(11)]
            tripped += trend(LAG, list(enumerate(values))).verdict == Verdict.FAIL
        assert tripped <= 4  # 1 % false alarms expected at confidence 0.99

    def test_tiny_rise_below_min_rise_passes(self) -> None:
        points = [(t, 1.0 + 0.05 * t) for t in range(10)]
        assert trend(LAG, points).verdict == Verdict.PASS

    def test_a_dip_every_fourth_step_does_not_hide_a_rise(self) -> None:
        # 0 -> 420 s with a dip every fourth step: half the steps do not rise, so a
        # vote of 90 % of the steps passed it.
        values = [t * 20 - (30 if t % 4 == 3 else 0) for t in range(22)]
        assert trend(LAG, list(enumerate(values))).verdict == Verdict.FAIL

    def test_a_slow_rise_under_noise_is_found(self) -> None:
        spec = LAG.model_copy(update={"min_points": 10})
        rng = random.Random(3)
        values = [(t / 6) + rng.gauss(0, 10) for t in range(0, 600, 15)]  # +10 s/min
        points = [(t, v) for t, v in zip(range(0, 600, 15), values, strict=True)]
        j = rising_trend(spec, points, step_seconds=15.0)
        assert j.verdict == Verdict.FAIL, j.reason
        assert j.details["slope_per_second"] == pytest.approx(1 / 6, rel=0.5)

    def test_min_slope_lets_a_significant_crawl_pass(self) -> None:
        spec = LAG.model_copy(update={"min_slope": 1.0, "min_rise": 0.0})
        points = [(t, 0.5 * t) for t in range(10)]
        assert trend(spec, points).verdict == Verdict.PASS

    def test_a_flat_lag_above_the_ceiling_fails(self) -> None:
        spec = LAG.model_copy(update={"ceiling": 300.0})
        flat_high = [(t, 420.0 + (t % 2)) for t in range(10)]
        j = trend(spec, flat_high)
        assert j.verdict == Verdict.FAIL and "ceiling 300" in j.reason
        assert trend(spec, [(t, 200.0 + (t % 2)) for t in range(10)]).verdict == Verdict.PASS

    def test_unsorted_points_are_sorted_by_time(self) -> None:
        points = [(t, float(t)) for t in range(10)][::-1]
        assert trend(LAG, points).verdict == Verdict.FAIL

    @pytest.mark.parametrize(
        "points", [None, [], [(0, 1.0), (1, 2.0)], [(t, NAN) for t in range(10)]]
    )
    def test_too_few_usable_points_is_inconclusive(self, points) -> None:
        assert trend(LAG, points).verdict == Verdict.INCONCLUSIVE

    def test_the_old_vote_setting_is_refused_with_what_replaced_it(self) -> None:
        with pytest.raises(ValidationError, match="rising_fraction is gone"):
            RisingTrend.model_validate(
                {"name": "l", "judge": "rising_trend", "series": Q, "rising_fraction": 0.9}
            )


class TestLatencyToBaseline:
    def test_above_factor_and_floor_fails_and_says_both(self) -> None:
        j = latency_to_baseline(LATENCY, 0.450, 0.200)
        assert j.verdict == Verdict.FAIL
        assert j.reason.startswith("canary p99 450.0 ms vs baseline 200.0 ms: 2.2x")
        assert latency_to_baseline(LATENCY, 0.290, 0.200).verdict == Verdict.PASS

    def test_below_the_floor_never_fails(self) -> None:
        assert latency_to_baseline(LATENCY, 0.090, 0.010).verdict == Verdict.PASS  # 9x

    @pytest.mark.parametrize("canary", [None, NAN, math.inf])
    def test_no_canary_latency_is_inconclusive(self, canary) -> None:
        assert latency_to_baseline(LATENCY, canary, 0.2).verdict == Verdict.INCONCLUSIVE

    def test_no_stable_traffic_uses_the_last_measured_baseline(self) -> None:
        j = latency_to_baseline(LATENCY, 0.5, NAN, previous_baseline=200.0)
        assert j.verdict == Verdict.FAIL and "last measured stable p99" in j.reason
        assert latency_to_baseline(LATENCY, 0.5, NAN).verdict == Verdict.INCONCLUSIVE
        measured = latency_to_baseline(LATENCY, 0.2, 0.2)
        assert measured.details["measured_baseline"] == pytest.approx(200.0)


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


class MeetingProvider:
    """Every query waits until as many queries as there are criteria are waiting at
    once: it answers only if the criteria are measured concurrently (one after
    another, the first would wait alone until the barrier gives up)."""

    def __init__(self, parties: int) -> None:
        import threading

        self.barrier = threading.Barrier(parties, timeout=20)
        self.met = threading.Event()

    def instant(self, query: str, at: object = None) -> list:
        from controller.metrics.prometheus import Sample

        if not self.met.is_set():
            self.barrier.wait()
            self.met.set()
        return [Sample({}, 0.0 if "errors" in query else 1000.0)]

    def range(self, query: str, start: object, end: object, step: float) -> list:
        return []


def test_the_criteria_of_a_check_are_measured_concurrently_and_in_order() -> None:
    from datetime import UTC, datetime, timedelta

    from controller.analysis.runner import measure_all

    queries = {
        "canary_errors": "sum(errors)",
        "baseline_errors": "sum(errors)",
        "canary_total": "sum(total)",
        "baseline_total": "sum(total)",
    }
    criteria = [five_xx(name=f"c{i}", **queries) for i in range(4)]
    found = measure_all(
        criteria, MeetingProvider(len(criteria)), {}, timedelta(minutes=1), datetime.now(UTC)
    )
    assert [m.criterion for m in found] == ["c0", "c1", "c2", "c3"]
    assert [m.judgement.verdict for m in found] == [Verdict.PASS] * 4, [
        m.judgement.reason for m in found
    ]
