"""Batched answers are shared by every worker process through a real Redis.

Each process keeps its own ``SharedAnswers`` (Celery's prefork pool forks them);
through the broker's Redis one of them asks a query per slot and the others read
its answer. The provider is a counting one (the unit of these tests is the
sharing, not Prometheus: ``test_batched_queries`` covers the numbers); the
processes and the Redis are real.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import secrets
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog
import structlog.testing

from controller.analysis.answer_cache import KEY_PREFIX, RedisAnswerCache
from controller.analysis.batching import BatchedQuery, SharedAnswers
from controller.lab.ports import free_port
from controller.lab.redis import RedisServer, ensure_redis
from controller.metrics.prometheus import MetricsError, Sample, Series

pytestmark = pytest.mark.integration

QUERY = BatchedQuery('sum by (service) (up{service!=""})', (("service", "b"),))
INTERVAL = timedelta(seconds=10)
PROCESSES = 4


class CountingProvider:
    """Answers three services' samples after ``delay`` seconds; counts its requests."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls = 0

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        self.calls += 1
        time.sleep(self.delay)
        if self.fail:
            raise MetricsError(query, "down")
        values = {"a": 1.0, "b": math.nan, "c": math.inf}
        return [Sample({"service": name}, value) for name, value in values.items()]

    def range(self, query: str, start: datetime, end: datetime, step: float) -> list[Series]:
        self.calls += 1
        return [Series({"service": "b"}, [(start.timestamp(), 1.5), (end.timestamp(), 2.5)])]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = ensure_redis(tmp_path_factory.mktemp("answers"), db=7)
    yield server
    server.stop()


@pytest.fixture()
def namespace() -> str:
    return f"test-{secrets.token_hex(6)}"  # each test its own keys on a shared Redis


def cache(server: RedisServer, namespace: str, claim_seconds: float = 5.0) -> RedisAnswerCache:
    return RedisAnswerCache.from_url(server.url, namespace, claim_seconds)


def now() -> datetime:
    return datetime.now(UTC)


def _one_process(url: str, namespace: str, at: str, queue: multiprocessing.Queue) -> None:
    provider = CountingProvider(delay=0.3)
    shared = SharedAnswers(provider, fleet=RedisAnswerCache.from_url(url, namespace, 5.0))
    samples, evaluated_at = shared.instant(QUERY, datetime.fromisoformat(at), INTERVAL)
    queue.put((provider.calls, [s.labels for s in samples], evaluated_at.isoformat()))


def test_one_process_of_many_asks_a_query_per_slot_and_the_others_read_its_answer(
    redis_server: RedisServer, namespace: str
) -> None:
    context = multiprocessing.get_context("spawn")  # separate interpreters, as workers
    queue = context.Queue()
    at = now().isoformat()
    processes = [
        context.Process(target=_one_process, args=(redis_server.url, namespace, at, queue))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    answers = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    assert sum(calls for calls, _, _ in answers) == 1  # one request for all processes
    assert {str(labels) for _, labels, _ in answers} == {"[{'service': 'b'}]"}
    (evaluated_at,) = {evaluated_at for _, _, evaluated_at in answers}
    fleet = cache(redis_server, namespace)
    key = fleet.key(("instant", QUERY.query, datetime.fromisoformat(evaluated_at)))
    assert key.startswith(KEY_PREFIX)
    assert 0 < fleet.client.pttl(key) <= 20_000  # kept four 5 s slots, then gone
    assert not fleet.client.exists(key + ":claim")  # given back by its holder


def test_a_shared_answer_keeps_nan_infinity_and_range_points(
    redis_server: RedisServer, namespace: str
) -> None:
    first, second = CountingProvider(), CountingProvider()
    here = SharedAnswers(first, fleet=cache(redis_server, namespace))
    there = SharedAnswers(second, fleet=cache(redis_server, namespace))
    at = now()
    everyone = BatchedQuery(QUERY.query, ())
    asked, _ = here.instant(everyone, at, INTERVAL)
    read, _ = there.instant(everyone, at, INTERVAL)
    assert (first.calls, second.calls) == (1, 0)
    assert [s.labels for s in read] == [s.labels for s in asked]
    assert read[0].value == 1.0 and math.isnan(read[1].value) and read[2].value == math.inf
    window = timedelta(seconds=40)
    asked_series, _ = here.range(QUERY, at, window, 10.0, INTERVAL)
    read_series, _ = there.range(QUERY, at, window, 10.0, INTERVAL)
    assert read_series == asked_series and (first.calls, second.calls) == (2, 0)


def test_a_failed_query_is_never_stored_and_those_waiting_are_told_at_once(
    redis_server: RedisServer, namespace: str
) -> None:
    """The process that asked gives its claim back and says the query failed: the
    others measure per rollout right away (their own MetricsError) instead of each
    waiting out the claim and asking a failing Prometheus in turn. The next slot
    asks again."""
    failing, waiting = CountingProvider(fail=True), CountingProvider()
    at = now()
    fleet = cache(redis_server, namespace)
    with pytest.raises(MetricsError):
        SharedAnswers(failing, fleet=fleet).instant(QUERY, at, INTERVAL)
    slot = SharedAnswers(failing).evaluated_at(at, INTERVAL)
    key = fleet.key(("instant", QUERY.query, slot))
    assert fleet.client.get(key) is None and not fleet.client.exists(key + ":claim")
    with pytest.raises(MetricsError, match="failed in another worker"):
        SharedAnswers(waiting, fleet=cache(redis_server, namespace)).instant(QUERY, at, INTERVAL)
    assert waiting.calls == 0
    samples, _ = SharedAnswers(waiting, fleet=fleet).instant(
        QUERY, at + timedelta(seconds=5), INTERVAL
    )
    assert waiting.calls == 1 and [s.labels for s in samples] == [{"service": "b"}]


def test_a_process_waits_for_a_claim_only_as_long_as_the_claim_lasts(
    redis_server: RedisServer, namespace: str
) -> None:
    """A claimant that died (SIGKILL, OOM) never answers: the waiter asks itself
    once the claim's time is up, and does not wait longer."""
    at = now()
    slow = cache(redis_server, namespace, claim_seconds=0.5)
    shared = SharedAnswers(CountingProvider(), fleet=slow)
    slot = shared.evaluated_at(at, INTERVAL)
    claim = slow.key(("instant", QUERY.query, slot)) + ":claim"
    slow.client.set(claim, b"someone", px=60_000)  # a claim whose holder is gone
    began = time.monotonic()
    samples, _ = shared.instant(QUERY, at, INTERVAL)
    waited = time.monotonic() - began
    assert shared.provider.calls == 1 and [s.labels for s in samples] == [{"service": "b"}]
    assert 0.4 < waited < 5.0  # the claim's 0.5 s, not the minute Redis keeps it
    assert slow.client.get(claim) == b"someone"  # never takes another's claim away


def test_without_redis_every_process_asks_for_itself_and_the_check_goes_on() -> None:
    nobody = RedisAnswerCache.from_url(f"redis://127.0.0.1:{free_port()}/0", "x", 1.0)
    provider = CountingProvider()
    shared = SharedAnswers(provider, fleet=nobody)
    at = now()
    with structlog.testing.capture_logs() as logs:
        samples, _ = shared.instant(QUERY, at, INTERVAL)
        shared.instant(QUERY, at + timedelta(seconds=5), INTERVAL)
    assert provider.calls == 2 and [s.labels for s in samples] == [{"service": "b"}]
    warnings = [e for e in logs if e["event"].startswith("answers not shared between workers")]
    assert len(warnings) == 1  # once a minute, not once a query


LONG_AGO = "2026-01-01T00:00:00+00:00"


def _stored(document: object) -> bytes:
    return zlib.compress(json.dumps(document).encode())


@pytest.mark.parametrize(
    "stored",
    [
        b"not zlib",
        _stored([1, 2]),
        _stored({"at": LONG_AGO, "samples": [[["x"], 1]], "series": []}),
        _stored({"at": LONG_AGO, "samples": [], "series": []}),
    ],
    ids=["not-compressed", "not-a-document", "labels-not-a-map", "another-slot"],
)
def test_a_bad_shared_answer_is_never_trusted(
    redis_server: RedisServer, namespace: str, stored: bytes
) -> None:
    fleet = cache(redis_server, namespace)
    provider = CountingProvider()
    shared = SharedAnswers(provider, fleet=fleet)
    at = now()
    slot = shared.evaluated_at(at, INTERVAL)
    fleet.client.set(fleet.key(("instant", QUERY.query, slot)), stored, px=60_000)
    samples, evaluated_at = shared.instant(QUERY, at, INTERVAL)
    assert provider.calls == 1 and [s.labels for s in samples] == [{"service": "b"}]
    assert evaluated_at == slot
