"""The demo service as a real subprocess: fault knobs, metrics, and Prometheus scraping it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.lab import DemoServiceProcess, PrometheusServer
from tests.integration.conftest import CANARY_VERSION, ENVIRONMENT, SERVICE, DemoPair

pytestmark = pytest.mark.integration


def scrape(demo: DemoServiceProcess, name: str, **labels: str) -> float:
    """Value of one sample from the service's own /metrics (0 if absent)."""
    text = httpx.get(f"{demo.url}/metrics", timeout=2.0, trust_env=False).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name}{labels} not exposed by {demo.version}")


def statuses(demo: DemoServiceProcess, n: int = 40, method: str = "GET") -> Counter[int]:
    with httpx.Client(base_url=demo.url, timeout=2.0, trust_env=False) as client:
        return Counter(client.request(method, "/orders").status_code for _ in range(n))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_healthy_service_answers_with_its_identity(demo_pair: DemoPair) -> None:
    response = httpx.get(f"{demo_pair.canary.url}/anything", trust_env=False)
    assert response.status_code == 200
    assert response.json() == {
        "service": SERVICE,
        "version": CANARY_VERSION,
        "environment": ENVIRONMENT,
        "status": "ok",
        "write": "ok",
    }
    assert statuses(demo_pair.canary, method="POST") == {200: 40}


def test_knobs_read_back_and_updates_are_absolute(demo_pair: DemoPair) -> None:
    canary = demo_pair.canary
    assert canary.get_faults() == {
        "error_rate": 0.0,
        "auth_failure_rate": 0.0,
        "queue_lag_growth": 0.0,
        "write_failure_rate": 0.0,
        "latency_ms": 0.0,
    }
    canary.set_faults(error_rate=0.5, write_failure_rate=0.1)
    canary.set_faults(auth_failure_rate=0.2)
    assert canary.get_faults() == {
        "error_rate": 0.0,
        "auth_failure_rate": 0.2,
        "queue_lag_growth": 0.0,
        "write_failure_rate": 0.0,
        "latency_ms": 0.0,
    }


def test_error_rate_makes_the_canary_answer_500(demo_pair: DemoPair) -> None:
    before = scrape(demo_pair.canary, "demo_http_requests_total", code="500")
    demo_pair.canary.set_faults(error_rate=1.0)
    assert statuses(demo_pair.canary) == {500: 40}
    assert statuses(demo_pair.stable) == {200: 40}
    assert scrape(demo_pair.canary, "demo_http_requests_total", code="500") == before + 40


def test_auth_failures_answer_401_and_count_failed_attempts(demo_pair: DemoPair) -> None:
    failures = scrape(demo_pair.canary, "demo_auth_attempts_total", result="failure")
    demo_pair.canary.set_faults(auth_failure_rate=1.0)
    response = httpx.get(f"{demo_pair.canary.url}/login", trust_env=False)
    assert response.status_code == 401
    assert response.json()["status"] == "unauthorized"
    assert statuses(demo_pair.canary, n=9) == {401: 9}
    after = scrape(demo_pair.canary, "demo_auth_attempts_total", result="failure")
    assert after == failures + 10


def test_write_failures_are_counted_while_http_looks_fine(demo_pair: DemoPair) -> None:
    writes = scrape(demo_pair.canary, "demo_writes_total")
    failed = scrape(demo_pair.canary, "demo_write_failures_total")
    demo_pair.canary.set_faults(write_failure_rate=1.0)
    assert statuses(demo_pair.canary, n=20) == {200: 20}
    assert scrape(demo_pair.canary, "demo_writes_total") == writes + 20
    assert scrape(demo_pair.canary, "demo_write_failures_total") == failed + 20


def test_health_and_metrics_are_not_traffic(demo_pair: DemoPair) -> None:
    ok = scrape(demo_pair.stable, "demo_http_requests_total", code="200")
    for _ in range(5):
        httpx.get(f"{demo_pair.stable.url}/healthz", trust_env=False).raise_for_status()
        httpx.get(f"{demo_pair.stable.url}/admin/faults", trust_env=False).raise_for_status()
    assert scrape(demo_pair.stable, "demo_http_requests_total", code="200") == ok


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"queue_lag_growth": -1}, "queue_lag_growth"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"latency_slow": 300}, "latency_slow"),
        ({"auth_failure_rate": "high"}, "auth_failure_rate"),
    ],
)
def test_bad_knobs_are_rejected_and_change_nothing(
    demo_pair: DemoPair, body: dict[str, object], field: str
) -> None:
    demo_pair.canary.set_faults(error_rate=0.3)
    response = httpx.put(f"{demo_pair.canary.url}/admin/faults", json=body, trust_env=False)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert demo_pair.canary.get_faults()["error_rate"] == 0.3


def test_malformed_json_is_rejected(demo_pair: DemoPair) -> None:
    response = httpx.put(
        f"{demo_pair.canary.url}/admin/faults", content=b"{not json", trust_env=False
    )
    assert response.status_code == 400
    assert response.json()["field"] == "body"


def test_every_series_exists_before_any_traffic(demo_pair: DemoPair) -> None:
    stable = demo_pair.stable
    for code in ("200", "401", "500"):
        scrape(stable, "demo_http_requests_total", code=code, environment=ENVIRONMENT)
    for result in ("success", "failure"):
        scrape(stable, "demo_auth_attempts_total", result=result, service=SERVICE)
    scrape(stable, "demo_writes_total")
    scrape(stable, "demo_write_failures_total")
    scrape(stable, "demo_queue_lag_seconds")


def test_healthy_queue_lag_is_noisy_and_growth_makes_it_climb(demo_pair: DemoPair) -> None:
    healthy = [scrape(demo_pair.stable, "demo_queue_lag_seconds") for _ in range(12)]
    assert all(0.25 <= value <= 0.75 for value in healthy), healthy
    assert any(later < earlier for earlier, later in zip(healthy, healthy[1:], strict=False))

    demo_pair.canary.set_faults(queue_lag_growth=2.0)
    rising = []
    for _ in range(4):
        time.sleep(0.3)
        rising.append(scrape(demo_pair.canary, "demo_queue_lag_seconds"))
    assert all(later > earlier for earlier, later in zip(rising, rising[1:], strict=False)), rising


def _prom_value(prometheus: PrometheusServer, promql: str) -> float | None:
    result = prometheus.query(promql)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_canary_request_counts(
    demo_pair: DemoPair, prometheus: PrometheusServer
) -> None:
    selector = f'service="{SERVICE}",environment="{ENVIRONMENT}",version="{CANARY_VERSION}"'
    statuses(demo_pair.canary, n=25)
    served = scrape(demo_pair.canary, "demo_http_requests_total", code="200")
    promql = f'demo_http_requests_total{{{selector},code="200"}}'

    def caught_up() -> bool:
        value = _prom_value(prometheus, promql)
        return value is not None and value >= served

    wait_for(caught_up, timeout=10, what=f"{promql} >= {served}")
    # Zero-initialised series are queryable too, which is what error-rate ratios need.
    assert _prom_value(prometheus, f'demo_http_requests_total{{{selector},code="500"}}') is not None


def test_prometheus_sees_queue_lag_rising(
    demo_pair: DemoPair, prometheus: PrometheusServer
) -> None:
    demo_pair.canary.set_faults(queue_lag_growth=5.0)
    promql = f'deriv(demo_queue_lag_seconds{{version="{CANARY_VERSION}"}}[3s])'

    def rising() -> bool:
        value = _prom_value(prometheus, promql)
        return value is not None and value > 2.0

    wait_for(rising, timeout=15, what=f"{promql} > 2")
