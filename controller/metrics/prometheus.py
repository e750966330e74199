"""Prometheus as the metrics provider that canary analysis asks for numbers.

The provider answers two kinds of question, an instant vector and a range, and fails
in exactly one way: ``MetricsError``. A failure means *Prometheus* could not answer,
never that the canary is bad, so analysis can hold a rollout instead of judging it.

prometheus-api-client does the HTTP, but two of its defaults are wrong for a controller
that must decide quickly: it has no timeout (a hung Prometheus hangs the worker) and it
silently retries 5xx for several seconds inside urllib3. We switch both off and apply
our own, visible policy: a per-request timeout and a small number of retries for
transport failures and 5xx only. A 4xx is a bad query; asking again cannot fix it.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
import structlog
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = [
    "MetricsError",
    "PrometheusProvider",
    "RetryPolicy",
    "Sample",
    "Series",
    "parse_value",
    "redact_url",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

_MAX_REASON_CHARS = 500
# Connections kept open to Prometheus per process (the client library keeps 10).
POOL_CONNECTIONS = 32


class MetricsError(Exception):
    """Prometheus could not answer: unreachable, timed out, 5xx, or rejected the query.

    Says nothing about the canary. ``status`` is the HTTP status when Prometheus did
    answer (4xx means the query itself is wrong), ``None`` for transport failures.
    ``url`` is already redacted; nothing secret ever reaches this object.
    """

    def __init__(
        self,
        query: str,
        reason: str,
        *,
        url: str = "",
        status: int | None = None,
        attempts: int = 1,
    ) -> None:
        # args stay (query, reason) so the exception pickles across Celery processes.
        super().__init__(query, reason)
        self.query = query
        self.reason = reason
        self.url = url
        self.status = status
        self.attempts = attempts

    def __str__(self) -> str:
        tries = "1 attempt" if self.attempts == 1 else f"{self.attempts} attempts"
        where = f"{self.url}; " if self.url else ""
        return f"{self.reason} (query: {self.query!r}; {where}{tries})"


@dataclass(frozen=True)
class Sample:
    """One series of an instant query. ``value`` may be NaN or ±inf: judges decide."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One series of a range query: ``(unix seconds, value)`` points, oldest first."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before declaring Prometheus unavailable.

    ``attempts`` counts the first try. Between tries we wait ``backoff_seconds``,
    doubling each time, so a restarting Prometheus gets a moment without stalling a
    worker for long. Only connection errors, timeouts and 5xx are retried.
    """

    attempts: int = 2
    backoff_seconds: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if not (self.backoff_seconds >= 0 and math.isfinite(self.backoff_seconds)):
            raise ValueError(f"backoff_seconds must be >= 0, got {self.backoff_seconds}")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return self.backoff_seconds * 2 ** (attempt - 1)


def parse_value(raw: object) -> float:
    """Parse a Prometheus sample value ("1.5", "NaN", "+Inf", "-Inf") into a float.

    Prometheus sends values as JSON strings precisely so NaN and infinities survive;
    we keep them. Python's ``float`` is laxer than Prometheus (it takes "1_000" and
    surrounding spaces), so anything Prometheus would never emit is refused.
    """
    if isinstance(raw, bool):
        raise ValueError(f"not a sample value: {raw!r}")
    if isinstance(raw, int | float):
        return float(raw)
    if not isinstance(raw, str) or not raw or raw != raw.strip() or "_" in raw:
        raise ValueError(f"not a sample value: {raw!r}")
    return float(raw)


def redact_url(url: str) -> str:
    """The URL safe to print: no userinfo (basic-auth credentials), query or fragment.

    Query strings can carry tokens too, and a Prometheus base URL never needs one.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class _Failure:
    reason: str
    retryable: bool
    status: int | None = None


_HTTP_ERROR = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.DOTALL)


def _classify_http_error(exc: PrometheusApiClientException) -> _Failure:
    """Turn the client's non-200 exception back into status + Prometheus's own error.

    The client only keeps ``"HTTP Status Code {status} ({body!r})"`` as text, so we
    parse that; the body is Prometheus's ``{"errorType": ..., "error": ...}`` JSON.
    """
    match = _HTTP_ERROR.match(str(exc))
    if match is None:
        return _Failure(_truncate(f"unexpected client error: {exc}"), retryable=False)
    status = int(match.group(1))
    detail = _prometheus_error_text(match.group(2))
    reason = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    return _Failure(_truncate(reason), retryable=status >= 500, status=status)


def _prometheus_error_text(body_repr: str) -> str:
    try:
        body = ast.literal_eval(body_repr)
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    except (ValueError, SyntaxError):
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())
    if not isinstance(data, dict):
        return " ".join(text.split())
    error_type, error = data.get("errorType"), data.get("error")
    return ": ".join(str(part) for part in (error_type, error) if part)


def _classify_transport_error(exc: requests.RequestException, timeout: float) -> _Failure:
    """Describe a failure to get any HTTP answer, without echoing URLs or headers."""
    if isinstance(exc, requests.ConnectTimeout):
        return _Failure(f"connect timed out after {timeout:g}s", retryable=True)
    if isinstance(exc, requests.Timeout):
        return _Failure(f"no response within {timeout:g}s", retryable=True)
    if isinstance(exc, requests.exceptions.SSLError):
        return _Failure(f"TLS failed: {_root_cause(exc)}", retryable=False)
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return _Failure(f"connection failed: {_root_cause(exc)}", retryable=True)
    return _Failure(f"request failed: {type(exc).__name__}", retryable=False)


def _root_cause(exc: BaseException) -> str:
    """The innermost error's text, e.g. "Connection refused".

    requests wraps urllib3 wraps socket errors; the outer texts repeat host, port and
    path. Only the innermost says what happened.
    """
    current: BaseException = exc
    for _ in range(10):
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = current.__cause__
        if inner is None:
            inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        if inner is None or inner is current:
            break
        current = inner
    if isinstance(current, OSError) and current.strerror:
        return current.strerror
    return _truncate(str(current)) or type(current).__name__


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def _unix(moment: datetime) -> float:
    """Seconds since the epoch; naive datetimes are refused.

    Python reads a naive datetime as *local* time, which would silently shift every
    analysis window by the host's UTC offset.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass a timezone-aware one")
    return moment.timestamp()


def _labels(item: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (item.get("metric") or {}).items()}


def _is_scalar_result(result: Any) -> bool:
    """Scalar/string results are a bare ``[ts, "value"]`` pair.

    The client returns only ``data.result`` and drops ``resultType``, so the shape is
    all we have: vectors and matrices are lists of objects.
    """
    return (
        isinstance(result, list)
        and len(result) == 2
        and isinstance(result[0], int | float)
        and isinstance(result[1], str)
    )


def _parse_instant(result: Any) -> list[Sample]:
    if not result:
        return []
    if _is_scalar_result(result):
        try:
            return [Sample(labels={}, value=parse_value(result[1]))]
        except ValueError as exc:
            raise _ShapeError(f"query returned a string, not a number: {result[1]!r}") from exc
    samples = []
    for item in result:
        if not isinstance(item, dict) or "value" not in item:
            raise _ShapeError(
                "instant query returned a range vector; wrap the [range] in a function"
                " such as rate() or max_over_time()"
            )
        samples.append(Sample(labels=_labels(item), value=parse_value(item["value"][1])))
    return samples


def _parse_range(result: Any) -> list[Series]:
    series = []
    for item in result or []:
        points = [(float(ts), parse_value(raw)) for ts, raw in item["values"]]
        series.append(Series(labels=_labels(item), points=points))
    return series


class _ShapeError(Exception):
    """Prometheus answered 200 with something we cannot read as numbers."""


class PrometheusProvider:
    """Instant and range queries against one Prometheus, with a timeout and retries.

    Reuse one provider per process: it keeps one HTTP client with pooled connections.
    It is fork-aware, so an instance created before Celery's prefork pool forks
    rebuilds its client in each child instead of sharing the parent's sockets.
    """

    def __init__(
        self,
        url: str,
        timeout_seconds: float = 2.0,
        retry: RetryPolicy = RetryPolicy(),
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) Prometheus URL: {redact_url(url)!r}")
        if not (timeout_seconds > 0 and math.isfinite(timeout_seconds)):
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds}")
        self._url = url.rstrip("/")
        self._safe_url = redact_url(self._url)
        self._timeout = float(timeout_seconds)
        self._retry = retry
        self._headers = dict(headers or {})
        self._pid = os.getpid()
        self._http, self._client = self._connect()

    @property
    def url(self) -> str:
        """The Prometheus URL without credentials, for logs and messages."""
        return self._safe_url

    def _connect(self) -> tuple[requests.Session, PrometheusConnect]:
        http = requests.Session()
        # No hidden urllib3 retries: every attempt is ours, counted and bounded.
        retry = Retry(total=0, read=False, redirect=0, raise_on_status=False)
        client = PrometheusConnect(
            url=self._url,
            headers=self._headers,
            retry=retry,
            timeout=self._timeout,  # annotated int, but passed straight to requests
            session=http,
        )
        # The client mounts an adapter that keeps 10 connections; a worker asks from
        # more threads than that (every check's criteria, the batched fetches), and
        # each connection past 10 was closed after one query.
        http.mount(client.url, HTTPAdapter(max_retries=retry, pool_maxsize=POOL_CONNECTIONS))
        return http, client

    def _live_client(self) -> PrometheusConnect:
        if os.getpid() != self._pid:
            # Forked child: the inherited pool's sockets belong to the parent.
            self._pid = os.getpid()
            self._http, self._client = self._connect()
        return self._client

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        """Evaluate ``query`` at ``at`` (default: Prometheus's now).

        A vector gives one sample per series, a scalar one sample with no labels, and
        an empty vector ``[]`` (no data is an answer, not an error).
        """
        params = {"timeout": f"{self._timeout:g}"}
        if at is not None:
            params["time"] = f"{_unix(at):.3f}"
        return self._attempt(
            query, lambda: _parse_instant(self._live_client().custom_query(query, params=params))
        )

    def range(
        self, query: str, start: datetime, end: datetime, step_seconds: float
    ) -> list[Series]:
        """Evaluate ``query`` every ``step_seconds`` from ``start`` to ``end``, inclusive."""
        if not (step_seconds > 0 and math.isfinite(step_seconds)):
            raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
        start_ts, end_ts = _unix(start), _unix(end)
        if end_ts < start_ts:
            raise ValueError("range end is before its start")
        step = repr(float(step_seconds))  # "60.0": full precision, never exponent-rounded
        # The client rounds start/end to whole seconds; our params override its values.
        params = {
            "start": f"{start_ts:.3f}",
            "end": f"{end_ts:.3f}",
            "step": step,
            "timeout": f"{self._timeout:g}",
        }
        return self._attempt(
            query,
            lambda: _parse_range(
                self._live_client().custom_query_range(query, start, end, step, params=params)
            ),
        )

    def healthy(self) -> bool:
        """Whether Prometheus says it is ready to serve queries (``GET /-/ready``)."""
        self._live_client()
        try:
            with self._http.get(
                f"{self._url}/-/ready", headers=self._headers, timeout=self._timeout
            ) as response:
                return response.status_code == 200
        except requests.RequestException:
            return False

    def close(self) -> None:
        """Release pooled connections."""
        self._client.close()

    def __enter__(self) -> PrometheusProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _attempt(self, query: str, call: Callable[[], T]) -> T:
        """Run ``call`` under the retry policy; every failure leaves as ``MetricsError``."""
        attempts = self._retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except PrometheusApiClientException as exc:
                failure, cause = _classify_http_error(exc), exc
            except requests.exceptions.JSONDecodeError as exc:
                failure, cause = _Failure("response was not JSON", retryable=False), exc
            except requests.RequestException as exc:
                failure, cause = _classify_transport_error(exc, self._timeout), exc
            except _ShapeError as exc:
                failure, cause = _Failure(str(exc), retryable=False), exc
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                reason = _truncate(f"unexpected response: {type(exc).__name__}: {exc}")
                failure, cause = _Failure(reason, retryable=False), exc
            if not failure.retryable or attempt == attempts:
                raise MetricsError(
                    query,
                    failure.reason,
                    url=self._safe_url,
                    status=failure.status,
                    attempts=attempt,
                ) from cause
            delay = self._retry.delay_after(attempt)
            log.warning(
                "prometheus_retry",
                url=self._safe_url,
                attempt=attempt,
                of=attempts,
                reason=failure.reason,
                retry_in=delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")
