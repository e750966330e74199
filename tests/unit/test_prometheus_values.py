"""Pure parsing and redaction rules of the Prometheus provider; no server involved."""

import math
import pickle

import pytest
from prometheus_api_client.exceptions import PrometheusApiClientException

from controller.metrics.prometheus import (
    MetricsError,
    RetryPolicy,
    Sample,
    _classify_http_error,
    _parse_instant,
    _parse_range,
    _ShapeError,
    parse_value,
    redact_url,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", 1.0), ("0.25", 0.25), ("-3.5", -3.5), ("1e+06", 1e6), ("-0", -0.0), (7, 7.0)],
)
def test_numbers_parse(raw: object, expected: float) -> None:
    assert parse_value(raw) == expected


def test_nan_is_kept() -> None:
    assert math.isnan(parse_value("NaN"))


def test_infinities_are_kept() -> None:
    assert parse_value("+Inf") == math.inf
    assert parse_value("-Inf") == -math.inf


@pytest.mark.parametrize("raw", ["", " 1", "1 ", "1_000", "abc", None, True, [1]])
def test_things_prometheus_never_sends_are_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_value(raw)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://prom:9090", "http://prom:9090"),
        ("https://alice:s3cret@prom.example:443/prometheus", "https://prom.example:443/prometheus"),
        ("http://token@prom:9090", "http://prom:9090"),
        ("http://u:p%40ss@[::1]:9090/", "http://[::1]:9090/"),
        ("http://prom:9090/?access_token=abc#frag", "http://prom:9090/"),
    ],
)
def test_redact_url_drops_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def _client_error(status: int, body: bytes) -> PrometheusApiClientException:
    # The exact text prometheus-api-client raises for any non-200 answer.
    return PrometheusApiClientException(f"HTTP Status Code {status} ({body!r})")


def test_bad_query_is_not_retryable_and_keeps_prometheus_text() -> None:
    body = (
        b'{"status":"error","errorType":"bad_data","error":"invalid parameter \\"query\\": '
        b'1:5: parse error: unclosed left parenthesis"}'
    )
    failure = _classify_http_error(_client_error(400, body))
    assert failure.status == 400
    assert not failure.retryable
    assert failure.reason == (
        'HTTP 400: bad_data: invalid parameter "query": 1:5: parse error: unclosed left parenthesis'
    )


def test_execution_error_is_not_retryable() -> None:
    body = b'{"status":"error","errorType":"execution","error":"many-to-many matching"}'
    failure = _classify_http_error(_client_error(422, body))
    assert (failure.status, failure.retryable) == (422, False)


def test_server_errors_are_retryable_even_without_json() -> None:
    failure = _classify_http_error(_client_error(503, b"<html>Service Unavailable</html>"))
    assert (failure.status, failure.retryable) == (503, True)
    assert failure.reason == "HTTP 503: <html>Service Unavailable</html>"


def test_unrecognised_client_error_is_not_retried() -> None:
    failure = _classify_http_error(PrometheusApiClientException("something else"))
    assert failure.status is None
    assert not failure.retryable


def test_metrics_error_message_and_pickling() -> None:
    err = MetricsError(
        "up", "connection failed: Connection refused", url="http://prom:9090", attempts=2
    )
    assert str(err) == (
        "connection failed: Connection refused (query: 'up'; http://prom:9090; 2 attempts)"
    )
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.query, copy.reason, copy.url, copy.attempts) == (
        "up",
        err.reason,
        "http://prom:9090",
        2,
    )
    assert str(copy) == str(err)


def test_retry_policy_backoff_doubles() -> None:
    policy = RetryPolicy(attempts=4, backoff_seconds=0.2)
    assert [policy.delay_after(n) for n in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.8])


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"backoff_seconds": -1.0}])
def test_retry_policy_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_instant_shapes() -> None:
    assert _parse_instant([]) == []
    scalar = _parse_instant([1700000000.5, "NaN"])
    assert len(scalar) == 1 and scalar[0].labels == {} and math.isnan(scalar[0].value)
    vector = [{"metric": {"job": "api"}, "value": [1700000000, "+Inf"]}]
    assert _parse_instant(vector) == [Sample({"job": "api"}, math.inf)]


def test_instant_refuses_strings_and_range_vectors() -> None:
    with pytest.raises(_ShapeError, match="string"):
        _parse_instant([1700000000, "hello"])
    with pytest.raises(_ShapeError, match="range vector"):
        _parse_instant([{"metric": {}, "values": [[1700000000, "1"]]}])


def test_range_points_keep_nan() -> None:
    (series,) = _parse_range([{"metric": {"a": "b"}, "values": [[1, "1"], [2, "NaN"]]}])
    assert series.labels == {"a": "b"}
    assert series.points[0] == (1.0, 1.0)
    assert math.isnan(series.points[1][1])


def test_the_connection_pool_to_prometheus_outlasts_a_workers_threads() -> None:
    """The client library keeps 10 connections; a worker asks from more threads than
    that, and each connection past the pool's size was closed after one query."""
    from controller.metrics.prometheus import POOL_CONNECTIONS, PrometheusProvider

    http, client = PrometheusProvider("http://127.0.0.1:9/prom")._connect()
    adapter = http.get_adapter(f"{client.url}/api/v1/query")
    assert adapter._pool_maxsize == POOL_CONNECTIONS >= 32  # noqa: SLF001
    assert adapter.max_retries.total == 0  # every attempt is still ours
