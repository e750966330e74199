"""A batched query that fails: rejected by Prometheus, the criterion is asked per
rollout; unanswered (down, timed out), it is an error verdict, and Prometheus is
not asked once per rollout instead (a thousand queries at the moment it could not
answer one). The failure's status reaches the other worker processes too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.analysis.answer_cache import SharedFailure
from controller.analysis.batching import SharedAnswers
from controller.analysis.runner import measure
from controller.analysis.verdict import Verdict
from controller.metrics.prometheus import MetricsError, Sample
from controller.plan import RatioThreshold

T0 = datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC)
CRITERION = RatioThreshold.model_validate(
    {
        "name": "auth",
        "judge": "ratio_threshold",
        "errors": 'sum(increase(auth_fail{service="{{ service }}"}[1m]))',
        "total": 'sum(increase(auth_total{service="{{ service }}"}[1m]))',
        "max_ratio": 0.5,
        "min_requests": 1,
    }
)


class BatchFailingProvider:
    """Fails every batched query (``service!=""``) with ``status``; answers a
    rollout's own queries."""

    def __init__(self, status: int | None) -> None:
        self.status = status
        self.asked: list[str] = []

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        self.asked.append(query)
        if 'service!=""' in query:
            raise MetricsError(query, "no response within 2s", status=self.status)
        return [Sample({}, 1.0 if "auth_fail" in query else 10.0)]


def measured(provider: BatchFailingProvider):  # noqa: ANN201
    shared = SharedAnswers(provider, timedelta(seconds=5), serve_previous=True)
    return measure(
        CRITERION,
        provider,
        {"service": "b"},
        timedelta(minutes=1),
        T0,
        shared=shared,
        interval=timedelta(seconds=10),
    )


@pytest.mark.parametrize("status", [503, 429, 408, None])
def test_prometheus_overloaded_or_down_is_never_asked_per_rollout(status: int | None) -> None:
    """Down, timed out, a 5xx, or a proxy in front of it shedding load (408, 429)."""
    provider = BatchFailingProvider(status=status)
    measurement = measured(provider)
    assert measurement.verdict == Verdict.ERROR
    assert "no response within 2s" in measurement.judgement.reason
    assert provider.asked and all('service!=""' in query for query in provider.asked)


@pytest.mark.parametrize("status", [422, 400])  # e.g. too many samples for one query
def test_a_rejected_batched_query_is_asked_per_rollout(status: int) -> None:
    provider = BatchFailingProvider(status=status)
    measurement = measured(provider)
    assert measurement.verdict == Verdict.PASS
    assert measurement.inputs == {"errors": 1.0, "total": 10.0}
    assert measurement.batched_roles == ()
    assert [query for query in provider.asked if 'service="b"' in query]


def test_a_shared_failure_keeps_prometheus_status_between_processes() -> None:
    stored = SharedFailure("MetricsError: HTTP 422: too many samples", 422).stored()
    failure = SharedFailure.from_stored(stored)
    assert failure.status == 422 and "too many samples" in str(failure)
    unanswered = SharedFailure.from_stored(SharedFailure("timed out").stored())
    assert unanswered.status is None and str(unanswered) == "timed out"


def test_a_bare_stored_reason_reads_as_unanswered() -> None:
    failure = SharedFailure.from_stored(b"MetricsError: down")
    assert failure.status is None and str(failure) == "MetricsError: down"
