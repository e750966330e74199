"""The decision rules the engine and ``canary backtest`` share, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from textwrap import dedent

from controller.analysis.decisions import Streaks, missing_data_streaks, update_breaches
from controller.analysis.runner import Measurement
from controller.analysis.verdict import Judgement, Verdict
from controller.plan import Plan
from controller.plan_loader import parse_plan

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

PLAN = """
name: unit
analysis: {interval: 10s, window: 1m, inconclusive_limit: 3, error_limit: 2}
stages:
  - {name: canary, kind: canary, weight: 10, hold: 1m}
  - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 1m}]}
stop_criteria:
  - name: slow
    judge: ratio_threshold
    max_ratio: 0.05
    sustained_for: 20s
    errors: errors_a
    total: total_a
  - name: fast
    judge: zero_tolerance
    failures: failures_b
"""


def plan() -> Plan:
    return parse_plan(dedent(PLAN))


def m(criterion: str, verdict: Verdict) -> Measurement:
    return Measurement(criterion, "test", {}, {}, Judgement(verdict, verdict.value))


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_breach_trips_once_it_has_lasted_sustained_for() -> None:
    criteria = {c.name: c for c in plan().stop_criteria}
    breaches, trips = update_breaches({}, [m("slow", Verdict.FAIL)], criteria, at(0))
    assert breaches == {"slow": at(0).isoformat()} and trips == []
    breaches, trips = update_breaches(breaches, [m("slow", Verdict.FAIL)], criteria, at(10))
    assert trips == []
    breaches, trips = update_breaches(breaches, [m("slow", Verdict.FAIL)], criteria, at(20))
    assert [(t.criterion.name, t.lasted) for t in trips] == [("slow", timedelta(seconds=20))]
    assert breaches == {"slow": at(0).isoformat()}


def test_zero_sustained_for_trips_at_the_first_failure() -> None:
    criteria = {c.name: c for c in plan().stop_criteria}
    _, trips = update_breaches({}, [m("fast", Verdict.FAIL)], criteria, at(0))
    assert [(t.criterion.name, t.lasted) for t in trips] == [("fast", timedelta(0))]


def test_a_pass_ends_a_breach_and_missing_data_does_not() -> None:
    criteria = {c.name: c for c in plan().stop_criteria}
    started = {"slow": at(0).isoformat()}
    for verdict in (Verdict.INCONCLUSIVE, Verdict.ERROR):
        breaches, trips = update_breaches(started, [m("slow", verdict)], criteria, at(30))
        assert breaches == started and trips == []
    breaches, _ = update_breaches(started, [m("slow", Verdict.PASS)], criteria, at(30))
    assert breaches == {"slow": None}
    assert started == {"slow": at(0).isoformat()}  # the input is never changed


def test_measurements_of_no_criterion_never_trip() -> None:
    criteria = {c.name: c for c in plan().stop_criteria}
    breaches, trips = update_breaches({}, [m("slot_versions", Verdict.FAIL)], criteria, at(0))
    assert breaches == {} and trips == []


def test_streaks_count_checks_in_a_row_and_reach_the_limits() -> None:
    policy = plan().analysis  # error_limit 2, inconclusive_limit 3
    streaks, why = missing_data_streaks(Streaks(), [m("slow", Verdict.ERROR)], policy)
    assert streaks == Streaks(error=1, inconclusive=0) and why is None
    streaks, why = missing_data_streaks(
        streaks, [m("slow", Verdict.ERROR), m("fast", Verdict.INCONCLUSIVE)], policy
    )
    assert streaks == Streaks(error=2, inconclusive=1)
    assert why is not None and why.startswith("2 checks in a row ended in an error (last: slow: ")


def test_a_check_without_missing_data_ends_the_streak() -> None:
    policy = plan().analysis
    streaks, why = missing_data_streaks(
        Streaks(error=1, inconclusive=2), [m("slow", Verdict.FAIL)], policy
    )
    assert streaks == Streaks() and why is None
    streaks, why = missing_data_streaks(
        Streaks(inconclusive=2), [m("slow", Verdict.INCONCLUSIVE)], policy
    )
    assert why == "3 checks in a row were inconclusive (last: slow: inconclusive)"


def because(criterion: str, verdict: Verdict, reason: str) -> Measurement:
    return Measurement(criterion, "test", {}, {}, Judgement(verdict, reason))


def test_a_pause_on_missing_data_names_every_criterion_and_its_reason() -> None:
    """Not "8 checks in a row were inconclusive (no data)": which query, and why."""
    policy = plan().analysis
    check = [
        because("slow", Verdict.INCONCLUSIVE, "too little traffic: 3 requests, need 100"),
        because("ok", Verdict.PASS, "fine"),
        because("fast", Verdict.INCONCLUSIVE, "no data for failures"),
    ]
    _, why = missing_data_streaks(Streaks(inconclusive=2), check, policy)
    assert why == (
        "3 checks in a row were inconclusive (last: slow: too little traffic: 3 requests, "
        "need 100; fast: no data for failures)"
    )
    check = [
        because("slow", Verdict.ERROR, "Prometheus: timed out"),
        because("fast", Verdict.ERROR, "Prometheus: connection refused"),
    ]
    _, why = missing_data_streaks(Streaks(error=1), iter(check), policy)
    assert why == (
        "2 checks in a row ended in an error (last: slow: Prometheus: timed out; "
        "fast: Prometheus: connection refused)"
    )
