"""At a slot's start a check judges the previous slot's shared answer while the
slot's is fetched, instead of every check waiting for the slot's query; never an
answer the rollout judged already, nor one from before its step began, and every
query of one criterion from one evaluation time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from controller.analysis.batching import BatchedQuery, SharedAnswers
from controller.analysis.runner import measure
from controller.analysis.verdict import Verdict
from controller.metrics.prometheus import MetricsError, Sample, Series
from controller.plan import RatioThreshold
from tests.unit.test_batch_failures import CRITERION as AUTH_RATIO

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SLOT = timedelta(seconds=5)
INTERVAL = timedelta(seconds=10)
QUERY = BatchedQuery('sum by (service) (up{service!=""})', (("service", "b"),))


class SlowProvider:
    """Answers with the evaluation time as the value; holds each call until released
    (``hold``), so a test sees what checks get while a query is on its way."""

    def __init__(self) -> None:
        self.calls: list[datetime | None] = []
        self.released = threading.Event()
        self.released.set()
        self.fail = False

    def hold(self) -> None:
        self.released.clear()

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        self.calls.append(at)
        assert self.released.wait(5)
        if self.fail:
            raise MetricsError(query, "down")
        value = at.timestamp() if at else 0.0
        return [Sample({"service": "b"}, value), Sample({"service": "c"}, value)]

    def range(self, query: str, start: datetime, end: datetime, step: float) -> list[Series]:
        self.calls.append(end)
        assert self.released.wait(5)
        return [Series({"service": "b"}, [(end.timestamp(), 1.0)])]


def wait_for(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        deadline.wait(0.01)
    raise AssertionError("condition not reached")


def test_the_previous_slot_is_served_while_the_slots_answer_is_fetched() -> None:
    provider = SlowProvider()
    shared = SharedAnswers(provider, SLOT, serve_previous=True)
    _, first = shared.instant(QUERY, T0 + timedelta(seconds=1), INTERVAL)
    assert first == T0  # nothing held before: the first slot is waited for

    provider.hold()
    _, served = shared.instant(QUERY, T0 + SLOT + timedelta(seconds=0.1), INTERVAL)
    assert served == T0  # not waited for: the previous slot's answer
    wait_for(lambda: len(provider.calls) == 2)  # the slot's is being fetched meanwhile
    assert provider.calls[-1] == T0 + SLOT
    _, again = shared.instant(QUERY, T0 + SLOT + timedelta(seconds=0.2), INTERVAL)
    assert again == T0 and len(provider.calls) == 2  # one fetch, not one per check

    provider.released.set()
    wait_for(lambda: not shared._in_flight)
    _, fresh = shared.instant(QUERY, T0 + SLOT + timedelta(seconds=0.3), INTERVAL)
    assert fresh == T0 + SLOT


def test_an_answer_not_newer_than_what_the_rollout_judged_is_never_served() -> None:
    provider = SlowProvider()
    shared = SharedAnswers(provider, SLOT, serve_previous=True)
    shared.instant(QUERY, T0 + timedelta(seconds=1), INTERVAL)
    _, evaluated = shared.instant(QUERY, T0 + SLOT + timedelta(seconds=1), INTERVAL, not_before=T0)
    assert evaluated == T0 + SLOT  # waited for: T0's answer was judged already


def test_only_the_slot_just_before_is_served() -> None:
    provider = SlowProvider()
    shared = SharedAnswers(provider, SLOT, serve_previous=True)
    shared.instant(QUERY, T0, INTERVAL)
    _, evaluated = shared.instant(QUERY, T0 + 2 * SLOT, INTERVAL)
    assert evaluated == T0 + 2 * SLOT  # two slots old is too old: waited for


def test_without_serving_previous_answers_every_slot_is_waited_for() -> None:
    provider = SlowProvider()
    shared = SharedAnswers(provider, SLOT)
    shared.instant(QUERY, T0, INTERVAL)
    _, evaluated = shared.instant(QUERY, T0 + SLOT, INTERVAL)
    assert evaluated == T0 + SLOT


def test_a_failed_fetch_is_not_kept_and_the_next_check_asks_again() -> None:
    provider = SlowProvider()
    shared = SharedAnswers(provider, SLOT, serve_previous=True)
    shared.instant(QUERY, T0, INTERVAL)
    provider.fail = True
    _, served = shared.instant(QUERY, T0 + SLOT, INTERVAL)
    assert served == T0
    wait_for(lambda: len(provider.calls) == 2 and not shared._in_flight)
    assert (QUERY.query, T0 + SLOT) not in {key[1:3] for key in shared._answers}
    provider.fail = False
    shared.instant(QUERY, T0 + SLOT + timedelta(seconds=1), INTERVAL)  # served, fetched again
    wait_for(lambda: len(provider.calls) == 3 and not shared._in_flight)
    _, fresh = shared.instant(QUERY, T0 + SLOT + timedelta(seconds=2), INTERVAL)
    assert fresh == T0 + SLOT


def test_a_given_evaluation_time_is_kept_or_fetched() -> None:
    provider = SlowProvider()
    shared = SharedAnswers(provider, SLOT, serve_previous=True)
    shared.instant(QUERY, T0, INTERVAL)
    now = T0 + SLOT + timedelta(seconds=1)
    _, kept = shared.instant(QUERY, now, INTERVAL, at=T0)
    assert kept == T0
    other = BatchedQuery('sum by (service) (down{service!=""})', (("service", "b"),))
    _, fetched = shared.instant(other, now, INTERVAL, at=T0)  # never asked at T0 before
    assert fetched == T0 and provider.calls[-1] == T0
    assert shared.instant(other, now, INTERVAL, at=T0 - SLOT, wait=False) is None


def test_a_criterions_queries_are_judged_from_one_evaluation_time() -> None:
    """The errors' previous answer is held, the totals' is not (first asked in this
    slot): the totals are fetched for the errors' evaluation time, not mixed."""
    criterion = AUTH_RATIO

    class Provider(SlowProvider):
        def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
            super().instant(query, at)
            # Errors grow with time and totals stay: mixing slots would change the ratio.
            value = 1.0 if "auth_fail" in query else 10.0
            return [Sample({"service": "b"}, value)]

    provider = Provider()
    shared = SharedAnswers(provider, SLOT, serve_previous=True)
    errors_only = RatioThreshold.model_validate(
        {**criterion.model_dump(), "total": criterion.errors}
    )
    measure(errors_only, provider, {"service": "b"}, timedelta(minutes=1), T0, shared=shared,
            interval=INTERVAL)  # fmt: skip
    measured = measure(
        criterion,
        provider,
        {"service": "b"},
        timedelta(minutes=1),
        T0 + SLOT + timedelta(seconds=1),
        shared=shared,
        interval=INTERVAL,
    )
    assert measured.verdict == Verdict.PASS
    assert measured.batched_at == T0 and set(measured.batched_roles) == {"errors", "total"}
    assert measured.inputs == {"errors": 1.0, "total": 10.0}
    wait_for(lambda: not shared._in_flight)  # the errors' slot, fetched meanwhile
    # T0 asked twice: the errors in the first check, the totals in the second.
    assert sorted(provider.calls) == [T0, T0, T0 + SLOT]


def test_a_fetch_ahead_runs_while_every_query_thread_waits() -> None:
    """Checks' query threads may all be waiting for the answer a fetch ahead brings:
    it must not need one of their threads to run."""
    from controller.background import THREADS, in_background

    provider = SlowProvider()
    shared = SharedAnswers(provider, SLOT, serve_previous=True)
    shared.instant(QUERY, T0, INTERVAL)
    busy = threading.Event()
    blocked = [in_background(busy.wait, 10) for _ in range(THREADS)]
    try:
        _, served = shared.instant(QUERY, T0 + SLOT + timedelta(seconds=0.1), INTERVAL)
        assert served == T0
        wait_for(lambda: not shared._in_flight)
        _, fresh = shared.instant(QUERY, T0 + SLOT + timedelta(seconds=0.2), INTERVAL)
        assert fresh == T0 + SLOT
    finally:
        busy.set()
        for future in blocked:
            future.result(5)
