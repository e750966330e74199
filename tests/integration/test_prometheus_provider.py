"""The Prometheus provider against a real Prometheus holding fixed, backfilled history.

History is written as OpenMetrics, turned into TSDB blocks by ``promtool tsdb
create-blocks-from openmetrics`` and served by a Prometheus with no scrape targets, so
every number below is known in advance. Failure modes use a stopped Prometheus, a
socket that never answers and a server that only says 503.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from controller.metrics import MetricsError, PrometheusProvider, RetryPolicy
from tests.integration.prometheus_history import PrometheusProcess, backfill, start_prometheus

pytestmark = pytest.mark.integration

STEP = 15  # seconds between backfilled samples
HISTORY = timedelta(hours=2)
COUNTER_INCREMENT = 10  # canary_requests_total grows by this much every STEP
STABLE_LATENCY = 0.25
NO_RETRY_DELAY = RetryPolicy(attempts=3, backoff_seconds=1.0)


def history_openmetrics(start: int, end: int) -> str:
    """A counter and a gauge every STEP seconds over [start, end] (unix seconds).

    OpenMetrics timestamps are seconds (not the text format's milliseconds), counter
    samples carry the ``_total`` suffix of their ``counter`` family, each series is
    written contiguously in time order, and the file must end with ``# EOF``.
    """
    times = range(start, end + 1, STEP)
    lines = ["# HELP canary_requests Requests served.", "# TYPE canary_requests counter"]
    lines += [
        f'canary_requests_total{{version="canary",code="200"}} '
        f"{(t - start) // STEP * COUNTER_INCREMENT} {t}"
        for t in times
    ]
    lines += ["# HELP canary_latency_seconds Latency p99.", "# TYPE canary_latency_seconds gauge"]
    lines += [f'canary_latency_seconds{{version="stable"}} {STABLE_LATENCY} {t}' for t in times]
    lines += [
        f'canary_latency_seconds{{version="canary"}} {(t - start) // STEP * 0.001:.3f} {t}'
        for t in times
    ]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# --- fixtures --------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    prometheus: PrometheusProcess
    start: datetime
    end: datetime  # time of the last backfilled sample


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    workdir = tmp_path_factory.mktemp("prometheus-history")
    # Last sample a little in the past (blocks must not reach into the future), yet
    # recent enough for "now" queries to see it within the 5m lookback.
    end = int(time.time()) // STEP * STEP - STEP
    start = end - int(HISTORY.total_seconds())
    storage = backfill(workdir, history_openmetrics(start, end))
    prom = start_prometheus(workdir, storage)
    try:
        yield History(prom, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    finally:
        prom.stop()


@pytest.fixture
def provider(history: History) -> Iterator[PrometheusProvider]:
    with PrometheusProvider(history.prometheus.url, timeout_seconds=5.0) as prov:
        yield prov


@pytest.fixture
def http_sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP request that reaches the transport adapter, i.e. every real attempt."""
    sent: list[str] = []
    original = HTTPAdapter.send

    def counting_send(self: HTTPAdapter, request: requests.PreparedRequest, **kwargs):
        sent.append(request.path_url)
        return original(self, request, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", counting_send)
    return sent


# --- answers ---------------------------------------------------------------------------


def test_instant_query_of_existing_series(provider: PrometheusProvider, history: History) -> None:
    samples = provider.instant("canary_latency_seconds", at=history.end)
    by_version = {s.labels["version"]: s for s in samples}
    assert set(by_version) == {"stable", "canary"}
    assert by_version["stable"].value == STABLE_LATENCY
    assert by_version["stable"].labels["__name__"] == "canary_latency_seconds"
    steps = int(HISTORY.total_seconds()) // STEP
    assert by_version["canary"].value == pytest.approx(steps * 0.001)


def test_instant_query_defaults_to_now(provider: PrometheusProvider) -> None:
    (sample,) = provider.instant('canary_latency_seconds{version="stable"}')
    assert sample.value == STABLE_LATENCY


def test_rate_of_backfilled_counter(provider: PrometheusProvider, history: History) -> None:
    (sample,) = provider.instant(
        "rate(canary_requests_total[5m])", at=history.end - timedelta(minutes=30)
    )
    assert sample.labels == {"version": "canary", "code": "200"}
    assert sample.value == pytest.approx(COUNTER_INCREMENT / STEP)


def test_missing_series_is_empty_not_an_error(provider: PrometheusProvider) -> None:
    assert provider.instant('canary_latency_seconds{version="nope"}') == []
    assert provider.instant("metric_that_was_never_written") == []


def test_nan_and_infinities_survive(provider: PrometheusProvider, history: History) -> None:
    (nan,) = provider.instant("0/0")
    assert nan.labels == {} and math.isnan(nan.value)
    (vector_nan,) = provider.instant(
        'canary_latency_seconds{version="stable"} * 0 / 0', at=history.end
    )
    assert vector_nan.labels == {"version": "stable"} and math.isnan(vector_nan.value)
    assert provider.instant("1/0")[0].value == math.inf
    assert provider.instant("-1/0")[0].value == -math.inf


def test_scalar_query(provider: PrometheusProvider, history: History) -> None:
    assert [(s.labels, s.value) for s in provider.instant("42")] == [({}, 42.0)]
    (sample,) = provider.instant('scalar(canary_latency_seconds{version="stable"})', at=history.end)
    assert (sample.labels, sample.value) == ({}, STABLE_LATENCY)


def test_range_query_returns_points(provider: PrometheusProvider, history: History) -> None:
    start = history.end - timedelta(minutes=10)
    (series,) = provider.range(
        'canary_latency_seconds{version="stable"}', start, history.end, step_seconds=60
    )
    assert series.labels == {"__name__": "canary_latency_seconds", "version": "stable"}
    first = start.timestamp()
    assert [ts for ts, _ in series.points] == [first + 60 * k for k in range(11)]
    assert {value for _, value in series.points} == {STABLE_LATENCY}


def test_range_query_keeps_sub_second_bounds(
    provider: PrometheusProvider, history: History
) -> None:
    start = history.end - timedelta(seconds=30, milliseconds=500)
    (series,) = provider.range("vector(1)", start, history.end, step_seconds=7.5)
    assert series.points[0][0] == pytest.approx(start.timestamp())
    assert len(series.points) == 5


def test_range_of_missing_series_is_empty(provider: PrometheusProvider, history: History) -> None:
    assert provider.range("nothing_here", history.start, history.end, 300) == []


def test_healthy(provider: PrometheusProvider) -> None:
    assert provider.healthy()


def test_credentials_in_url_are_used_and_not_required(history: History) -> None:
    url = history.prometheus.url.replace("http://", "http://alice:s3cret@")
    with PrometheusProvider(url, headers={"Authorization": "Bearer tok-123"}) as prov:
        assert prov.url == history.prometheus.url
        assert prov.instant("vector(1)")[0].value == 1.0


def test_naive_datetimes_are_refused(provider: PrometheusProvider) -> None:
    with pytest.raises(ValueError, match="naive"):
        provider.instant("vector(1)", at=datetime(2024, 1, 1))


# --- Prometheus rejects the query: no retries ------------------------------------------


def test_malformed_query_fails_at_once(history: History, http_sends: list[str]) -> None:
    with PrometheusProvider(history.prometheus.url, retry=NO_RETRY_DELAY) as prov:
        began = time.monotonic()
        with pytest.raises(MetricsError) as caught:
            prov.instant("sum(rate(canary_requests_total[5m])")
        elapsed = time.monotonic() - began
    err = caught.value
    assert len(http_sends) == 1
    assert elapsed < NO_RETRY_DELAY.backoff_seconds
    assert (err.status, err.attempts) == (400, 1)
    assert err.query == "sum(rate(canary_requests_total[5m])"
    assert "bad_data" in err.reason and "parse error" in err.reason


def test_execution_error_fails_at_once(history: History, http_sends: list[str]) -> None:
    query = '{__name__=~"canary.*"} + on() {__name__=~"canary.*"}'
    with (
        PrometheusProvider(history.prometheus.url, retry=NO_RETRY_DELAY) as prov,
        pytest.raises(MetricsError) as caught,
    ):
        prov.instant(query, at=history.end)
    assert len(http_sends) == 1
    assert caught.value.status == 422
    assert "many-to-many" in caught.value.reason


def test_range_vector_from_instant_query_is_explained(
    provider: PrometheusProvider, history: History
) -> None:
    with pytest.raises(MetricsError, match="rate"):
        provider.instant("canary_latency_seconds[1m]", at=history.end)


# --- Prometheus cannot answer: retried, then MetricsError ------------------------------


def test_stopped_prometheus_fails_after_configured_attempts(
    tmp_path: Path, http_sends: list[str]
) -> None:
    prom = start_prometheus(tmp_path, tmp_path / "tsdb")
    policy = RetryPolicy(attempts=3, backoff_seconds=0.1)
    secret_url = prom.url.replace("http://", "http://alice:s3cret@")
    prov = PrometheusProvider(
        secret_url, timeout_seconds=1.0, retry=policy, headers={"Authorization": "Bearer tok-123"}
    )
    try:
        assert prov.healthy()
        assert prov.instant("vector(1)")[0].value == 1.0  # a pooled connection now exists
        prom.stop()
        http_sends.clear()
        began = time.monotonic()
        with pytest.raises(MetricsError) as caught:
            prov.instant("vector(1)")
        elapsed = time.monotonic() - began
        assert not prov.healthy()
    finally:
        prom.stop()
        prov.close()
    err = caught.value
    assert len([p for p in http_sends if p.startswith("/api/v1/query")]) == 3
    assert err.attempts == 3 and err.status is None
    assert "connection" in err.reason.lower()
    assert 0.1 + 0.2 <= elapsed < 3.0
    rendered = "".join(traceback.format_exception(err))
    assert "s3cret" not in rendered and "tok-123" not in rendered
    assert prom.url in str(err)


@dataclass
class SilentServer:
    """Accepts connections and never answers, like a wedged Prometheus."""

    sock: socket.socket
    accepted: list[socket.socket] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()
        return f"http://{host}:{port}"

    def serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer(socket.create_server(("127.0.0.1", 0)))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        thread.join(timeout=5)
        for conn in server.accepted:
            conn.close()
        server.sock.close()


def test_server_that_never_answers_times_out(silent_server: SilentServer) -> None:
    timeout, policy = 0.5, RetryPolicy(attempts=2, backoff_seconds=0.1)
    with PrometheusProvider(silent_server.url, timeout_seconds=timeout, retry=policy) as prov:
        began = time.monotonic()
        with pytest.raises(MetricsError) as caught:
            prov.instant("vector(1)")
        elapsed = time.monotonic() - began
        assert not prov.healthy()
    assert caught.value.attempts == 2
    assert "no response within 0.5s" in caught.value.reason
    budget = timeout * policy.attempts + policy.backoff_seconds
    assert budget - 0.05 <= elapsed < budget + 1.0
    assert len(silent_server.accepted) >= 2  # the health probe may add one


class _Unavailable(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        body = b'{"status":"error","errorType":"unavailable","error":"TSDB not ready"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_503_is_retried_by_us_only() -> None:
    """prometheus-api-client's default would retry 503 in urllib3 for ~6 s unseen."""
    _Unavailable.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        policy = RetryPolicy(attempts=3, backoff_seconds=0.05)
        with PrometheusProvider(url, retry=policy) as prov:
            now = datetime.now(UTC)
            with pytest.raises(MetricsError) as caught:
                prov.range("vector(1)", now - timedelta(minutes=5), now, 60)
            assert not prov.healthy()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    query_hits = [p for p in _Unavailable.hits if p.startswith("/api/v1/query_range")]
    assert len(query_hits) == 3
    err = caught.value
    assert (err.status, err.attempts) == (503, 3)
    assert err.reason == "HTTP 503: unavailable: TSDB not ready"
