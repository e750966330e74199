"""Error series that do not exist yet: a service whose error counters appear only
with the first error returns no series for its error query while its total shows
traffic. That is 0 errors, unless the plan says otherwise; anything else missing is
still no data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.analysis.runner import measure, measure_all
from controller.analysis.verdict import Verdict
from controller.metrics.prometheus import MetricsError, Sample
from controller.plan import RatioThreshold, RatioToBaseline, ZeroTolerance

NOW = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = timedelta(minutes=5)


class Queries:
    """A fake Prometheus answering by query text; a missing answer is no series."""

    def __init__(self, answers: dict[str, float | None], down: bool = False):
        self.answers = answers
        self.down = down

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        if self.down:
            raise MetricsError(query, "connection refused")
        value = self.answers.get(query)
        return [] if value is None else [Sample({}, value)]

    def range(self, query, start, end, step_seconds):  # noqa: ANN001
        raise AssertionError("no range queries here")


def five_xx(**overrides: object) -> RatioToBaseline:
    return RatioToBaseline.model_validate(
        {
            "name": "5xx",
            "judge": "ratio_to_baseline",
            "canary_errors": "canary_errors",
            "canary_total": "canary_total",
            "baseline_errors": "baseline_errors",
            "baseline_total": "baseline_total",
            "min_requests": 100,
            **overrides,
        }
    )


def auth(**overrides: object) -> RatioThreshold:
    return RatioThreshold.model_validate(
        {"name": "auth", "judge": "ratio_threshold", "errors": "errors", "total": "total"}
        | {"max_ratio": 0.02, "min_requests": 100, **overrides}
    )


def writes(with_total: bool = True, **overrides: object) -> ZeroTolerance:
    fields = {"name": "writes", "judge": "zero_tolerance", "failures": "failures", **overrides}
    return ZeroTolerance.model_validate(fields | ({"total": "total"} if with_total else {}))


def run(criterion, answers: dict[str, float | None], down: bool = False):  # noqa: ANN001
    return measure(criterion, Queries(answers, down), {}, WINDOW, NOW)


def test_no_canary_error_series_with_traffic_is_zero_errors() -> None:
    m = run(five_xx(), {"canary_total": 240, "baseline_errors": 3, "baseline_total": 2400})
    assert m.verdict == Verdict.PASS
    assert (
        "no canary_errors series while canary_total shows 240: counted as 0" in m.judgement.reason
    )
    assert m.inputs["canary_errors"] == 0.0


def test_no_error_series_on_either_side() -> None:
    m = run(five_xx(), {"canary_total": 240, "baseline_total": 2400})
    assert m.verdict == Verdict.PASS
    assert "canary_errors" in m.judgement.reason and "baseline_errors" in m.judgement.reason


def test_a_real_error_rate_still_trips_next_to_an_absent_baseline_series() -> None:
    m = run(five_xx(), {"canary_errors": 40, "canary_total": 240, "baseline_total": 2400})
    assert m.verdict == Verdict.FAIL


@pytest.mark.parametrize(
    "answers",
    [
        {},  # nothing at all
        {"baseline_errors": 0, "baseline_total": 2400},  # no canary total
        {"canary_total": 0, "baseline_errors": 0, "baseline_total": 2400},  # no traffic
        {"canary_total": float("nan"), "baseline_errors": 0, "baseline_total": 2400},
    ],
)
def test_without_traffic_in_the_total_absent_errors_stay_no_data(answers: dict) -> None:
    assert run(five_xx(), answers).verdict == Verdict.INCONCLUSIVE


def test_the_plan_can_switch_it_off() -> None:
    answers = {"canary_total": 240, "baseline_errors": 3, "baseline_total": 2400}
    assert run(five_xx(absent_errors_are_zero=False), answers).verdict == Verdict.INCONCLUSIVE


def test_ratio_threshold_and_zero_tolerance_count_absent_failures_as_zero() -> None:
    m = run(auth(), {"total": 500})
    assert m.verdict == Verdict.PASS and "counted as 0" in m.judgement.reason
    m = run(writes(), {"total": 500})
    assert m.verdict == Verdict.PASS and "no failures series" in m.judgement.reason


def test_zero_tolerance_without_a_total_cannot_tell_absent_from_no_traffic() -> None:
    assert run(writes(with_total=False), {}).verdict == Verdict.INCONCLUSIVE


def test_prometheus_down_is_still_an_error() -> None:
    assert run(five_xx(), {}, down=True).verdict == Verdict.ERROR


# --- a zero_tolerance criterion without a total, next to one that counts requests ----
# "Any failed write", as a user writes it: sum(increase(app_write_failures_total[30s])).
# Alone it cannot tell a healthy canary from one without traffic; the check can.

HEALTHY = {"canary_total": 240, "baseline_errors": 3, "baseline_total": 2400}


def check(criteria: list, answers: dict[str, float | None], down: bool = False) -> dict:  # noqa: ANN001
    """One check of ``criteria``, as the engine measures it: by criterion name."""
    measured = measure_all(criteria, Queries(answers, down), {}, WINDOW, NOW)
    return {m.criterion: m for m in measured}


def test_absent_failures_count_as_zero_when_the_check_shows_canary_traffic() -> None:
    m = check([five_xx(), writes(with_total=False)], HEALTHY)["writes"]
    assert m.verdict == Verdict.PASS
    assert m.inputs["failures"] == 0.0
    assert m.judgement.reason == (
        "0 failures in the window, limit 0 (no failures series while 5xx's canary_total "
        "shows 240 canary requests in the same check: counted as 0)"
    )
    assert m.judgement.details["absent_counted_as_zero"] == 1.0


def test_the_first_failure_still_trips() -> None:
    m = check([five_xx(), writes(with_total=False)], {**HEALTHY, "failures": 1})["writes"]
    assert m.verdict == Verdict.FAIL


def test_any_canary_count_of_the_check_is_evidence() -> None:
    m = check([auth(), writes(with_total=False)], {"total": 500})["writes"]
    assert m.verdict == Verdict.PASS and "auth's total shows 500" in m.judgement.reason


@pytest.mark.parametrize(
    "answers",
    [
        {},  # no traffic anywhere
        {"baseline_errors": 0, "baseline_total": 2400},  # the stable's traffic is not the canary's
        {**HEALTHY, "canary_total": 0},
        {**HEALTHY, "canary_total": float("nan")},
    ],
)
def test_without_canary_traffic_in_the_check_it_stays_inconclusive_and_says_why(
    answers: dict,
) -> None:
    m = check([five_xx(), writes(with_total=False)], answers)["writes"]
    assert m.verdict == Verdict.INCONCLUSIVE
    assert m.judgement.reason == (
        "no data for failures (no failures series, and no criterion of this check counted "
        "canary requests)"
    )


def test_too_little_canary_traffic_for_its_min_requests_stays_inconclusive() -> None:
    m = check([five_xx(), writes(with_total=False, min_requests=500)], HEALTHY)["writes"]
    assert m.verdict == Verdict.INCONCLUSIVE
    assert "5xx's canary_total shows 240 canary requests, fewer than min_requests 500" in (
        m.judgement.reason
    )


def test_the_plan_can_switch_it_off_for_a_criterion_without_total() -> None:
    criteria = [five_xx(), writes(with_total=False, absent_errors_are_zero=False)]
    m = check(criteria, HEALTHY)["writes"]
    assert m.verdict == Verdict.INCONCLUSIVE and m.judgement.reason == "no data for failures"


def test_other_criteria_and_a_criterion_with_its_own_total_are_left_as_measured() -> None:
    measured = check([five_xx(), writes(with_total=True)], {**HEALTHY, "total": 0})
    assert measured["writes"].verdict == Verdict.INCONCLUSIVE  # its own total: no traffic
    assert measured["5xx"].verdict == Verdict.PASS


def test_prometheus_down_is_an_error_for_every_criterion() -> None:
    measured = check([five_xx(), writes(with_total=False)], HEALTHY, down=True)
    assert {m.verdict for m in measured.values()} == {Verdict.ERROR}
