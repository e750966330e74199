"""The shipped demo plan's judges on a real Prometheus scraping real services: latency
quantiles from histograms, the Mann-Kendall trend on a real queue lag, and the
binomial test on real request counts, each with a faulty and a healthy canary."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from config import PLANS_DIR
from controller.analysis.runner import Measurement, measure
from controller.analysis.verdict import Verdict
from controller.demo.loadgen import LoadGenerator
from controller.lab import PrometheusServer
from controller.metrics import PrometheusProvider
from controller.plan_loader import load_plan
from tests.integration.conftest import (
    CANARY_VERSION,
    ENVIRONMENT,
    SERVICE,
    STABLE_VERSION,
    DemoPair,
)

pytestmark = pytest.mark.integration

PLAN = load_plan(PLANS_DIR / "demo.yaml")
VALUES = {
    "service": SERVICE,
    "canary_version": CANARY_VERSION,
    "stable_version": STABLE_VERSION,
    "environment": ENVIRONMENT,
}


def measured(prometheus: PrometheusServer, name: str) -> Measurement:
    criterion = next(c for c in PLAN.stop_criteria if c.name == name)
    provider = PrometheusProvider(prometheus.url, timeout_seconds=5)
    return measure(criterion, provider, VALUES, PLAN.analysis.window, datetime.now(UTC))


def under_load(demo_pair: DemoPair, seconds: float) -> None:
    """Users on both versions for a whole window, then one more scrape."""
    load = LoadGenerator(
        [(f"{demo_pair.stable.url}/checkout", 40.0), (f"{demo_pair.canary.url}/checkout", 40.0)]
    )
    load.start()
    try:
        time.sleep(seconds)
    finally:
        load.stop()
    time.sleep(1.5)


def window_seconds() -> float:
    return PLAN.analysis.window.total_seconds() + 1


def test_a_slow_canary_fails_its_latency_quantiles_and_a_fast_one_passes(
    demo_pair: DemoPair, prometheus: PrometheusServer
) -> None:
    demo_pair.canary.set_faults(latency_ms=250)
    under_load(demo_pair, window_seconds())
    for name in ("latency_p95_vs_baseline", "latency_p99_vs_baseline"):
        found = measured(prometheus, name)
        assert found.verdict == Verdict.FAIL, found.judgement.reason
        assert found.judgement.value is not None and found.judgement.value >= 250
        assert "histogram_quantile" in found.queries["canary_latency"]

    demo_pair.canary.set_faults()
    under_load(demo_pair, window_seconds())
    for name in ("latency_p95_vs_baseline", "latency_p99_vs_baseline"):
        found = measured(prometheus, name)
        assert found.verdict == Verdict.PASS, found.judgement.reason


def test_a_climbing_queue_lag_trips_the_trend_and_a_noisy_flat_one_does_not(
    demo_pair: DemoPair, prometheus: PrometheusServer
) -> None:
    time.sleep(window_seconds())  # a window of the healthy lag's noise
    flat = measured(prometheus, "queue_lag_rising")
    assert flat.verdict == Verdict.PASS, flat.judgement.reason
    demo_pair.canary.set_faults(queue_lag_growth=1.0)
    time.sleep(window_seconds())
    rising = measured(prometheus, "queue_lag_rising")
    assert rising.verdict == Verdict.FAIL, rising.judgement.reason
    assert "Mann-Kendall" in rising.judgement.reason


def test_errors_fail_on_the_evidence_of_real_counts(
    demo_pair: DemoPair, prometheus: PrometheusServer
) -> None:
    demo_pair.canary.set_faults(error_rate=0.3)
    under_load(demo_pair, window_seconds())
    found = measured(prometheus, "http_5xx_vs_baseline")
    assert found.verdict == Verdict.FAIL, found.judgement.reason
    assert "p=" in found.judgement.reason and found.judgement.details["p_value"] < 0.01
    demo_pair.canary.set_faults()
    under_load(demo_pair, window_seconds())
    assert measured(prometheus, "http_5xx_vs_baseline").verdict == Verdict.PASS


def test_without_requests_a_latency_quantile_is_no_data(
    demo_pair: DemoPair, prometheus: PrometheusServer
) -> None:
    time.sleep(window_seconds())  # nobody calls the services
    found = measured(prometheus, "latency_p99_vs_baseline")
    assert found.verdict == Verdict.INCONCLUSIVE, found.judgement.reason
