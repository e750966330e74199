"""Fault knob validation and outcome rules of the demo service (no servers needed)."""

import random

import pytest

from controller.demo.service import (
    HEALTHY_LAG_JITTER,
    HEALTHY_LAG_SECONDS,
    FaultKnobs,
    KnobError,
    QueueLag,
    decide_outcome,
    parse_knobs,
)


def test_empty_document_means_healthy() -> None:
    assert parse_knobs({}) == FaultKnobs()


def test_update_is_absolute_missing_keys_reset_to_zero() -> None:
    knobs = parse_knobs({"error_rate": 0.25, "queue_lag_growth": 3})
    assert knobs == FaultKnobs(error_rate=0.25, queue_lag_growth=3.0)
    assert knobs.auth_failure_rate == 0.0
    assert knobs.write_failure_rate == 0.0


def test_all_knobs_round_trip() -> None:
    document = {
        "error_rate": 0.1,
        "auth_failure_rate": 1,
        "queue_lag_growth": 10.5,
        "write_failure_rate": 0,
        "latency_ms": 250,
    }
    assert parse_knobs(document).as_dict() == {k: float(v) for k, v in document.items()}


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"latency": 1}, "latency"),
        ({"error_rate": 1.01}, "error_rate"),
        ({"error_rate": -0.1}, "error_rate"),
        ({"auth_failure_rate": 2}, "auth_failure_rate"),
        ({"write_failure_rate": -1}, "write_failure_rate"),
        ({"queue_lag_growth": -0.5}, "queue_lag_growth"),
        ({"queue_lag_growth": float("inf")}, "queue_lag_growth"),
        ({"error_rate": float("nan")}, "error_rate"),
        ({"error_rate": "0.5"}, "error_rate"),
        ({"error_rate": True}, "error_rate"),
        ({"error_rate": None}, "error_rate"),
        ([1, 2], "body"),
        ("error_rate=1", "body"),
    ],
)
def test_rejections_name_the_field(document: object, field: str) -> None:
    with pytest.raises(KnobError) as caught:
        parse_knobs(document)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_queue_lag_growth_has_no_upper_bound() -> None:
    assert parse_knobs({"queue_lag_growth": 1e6}).queue_lag_growth == 1e6


def _outcomes(knobs: FaultKnobs, n: int = 2000) -> list[tuple[int, bool, bool]]:
    rng = random.Random(7)
    return [
        (o.status, o.auth_ok, o.write_ok) for o in (decide_outcome(knobs, rng) for _ in range(n))
    ]


def test_healthy_knobs_always_succeed() -> None:
    assert set(_outcomes(FaultKnobs())) == {(200, True, True)}


def test_error_rate_one_answers_500_and_auth_still_succeeds() -> None:
    assert {status for status, _, _ in _outcomes(FaultKnobs(error_rate=1))} == {500}
    assert all(auth_ok for _, auth_ok, _ in _outcomes(FaultKnobs(error_rate=1)))


def test_auth_failures_are_401_and_count_as_failed_auth() -> None:
    outcomes = _outcomes(FaultKnobs(auth_failure_rate=1))
    assert set(outcomes) == {(401, False, True)}


def test_auth_failure_rate_applies_to_requests_that_did_not_error() -> None:
    outcomes = _outcomes(FaultKnobs(error_rate=0.5, auth_failure_rate=0.5), n=4000)
    share_500 = sum(s == 500 for s, _, _ in outcomes) / len(outcomes)
    share_401 = sum(s == 401 for s, _, _ in outcomes) / len(outcomes)
    assert 0.45 < share_500 < 0.55
    assert 0.20 < share_401 < 0.30  # half of the remaining half


def test_write_failures_do_not_change_the_status() -> None:
    outcomes = _outcomes(FaultKnobs(write_failure_rate=1))
    assert set(outcomes) == {(200, True, False)}


def test_healthy_queue_lag_is_noisy_not_rising() -> None:
    lag = QueueLag(random.Random(3))
    values = [lag.value(now=1000.0 + i) for i in range(20)]
    assert all(
        HEALTHY_LAG_SECONDS - HEALTHY_LAG_JITTER <= v <= HEALTHY_LAG_SECONDS + HEALTHY_LAG_JITTER
        for v in values
    )
    assert any(b < a for a, b in zip(values, values[1:], strict=False))


def test_queue_lag_grows_from_the_moment_growth_is_set() -> None:
    lag = QueueLag(random.Random(3))
    lag.set_growth(2.0, now=100.0)
    assert lag.value(now=110.0) == pytest.approx(20.0 + HEALTHY_LAG_SECONDS, abs=0.21)
    lag.set_growth(2.0, now=105.0)  # same value: the clock keeps running
    assert lag.value(now=110.0) == pytest.approx(20.0 + HEALTHY_LAG_SECONDS, abs=0.21)
    lag.set_growth(0.0, now=110.0)
    assert lag.value(now=500.0) == pytest.approx(HEALTHY_LAG_SECONDS, abs=0.21)
