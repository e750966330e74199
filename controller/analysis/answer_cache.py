"""Answers of batched queries shared by every worker process, through Redis.

``SharedAnswers`` asks a batched query once per slot *per process*. Celery's
prefork pool runs several processes per worker and a fleet runs several workers,
so a query that answers a thousand rollouts would still be asked by every one of
them, each slot: at 1,000 rollouts that alone kept Prometheus busy on both cores
of a small machine. Here one process per slot asks; the others read its answer.

The protocol per (query, slot): read the answer; if none, claim the right to ask
(``SET NX`` of a token of its own, with an expiry); the claimant asks Prometheus,
stores the answer (compressed, expiring a few slots later) and gives its claim
back; the others poll for the answer, and when a claim is given back without one
(the query failed) the next of them claims and asks, one at a time, not all at
once. A failure is never stored. Redis failing costs sharing, never a check: any
error of Redis or of a stored answer (one that does not decode, has the wrong
shape or another slot's time) falls back to asking Prometheus directly
(``AnswerCacheError``), and after one, the cache is left alone for a while.

Keys are flat in the number of rollouts: one answer and at most one claim per
distinct batched query and slot, each expiring on its own.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
import structlog

from controller import timeouts
from controller.metrics.prometheus import MetricsError, Sample, Series

log = structlog.get_logger(__name__)

KEY_PREFIX = "canary:answer:v3:"  # the version of the stored format
# How often a process waiting for another's answer looks for it: soon at first,
# then less often (every waiting process polls every query it waits for: at a
# thousand rollouts a slow Prometheus had them poll Redis thousands of times a
# second, a core's worth).
POLL_SECONDS = 0.02
MAX_POLL_SECONDS = 0.16
# After Redis failed, how long every query goes straight to Prometheus: a Redis
# that does not answer must not cost each query a connect timeout.
PAUSE_AFTER_FAILURE_SECONDS = 30.0
# Give the claim back only if it is still ours (a slow asker's claim may have
# expired and been taken by another process).
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""


class AnswerCacheError(Exception):
    """The shared cache could not be used for this answer: ask Prometheus directly."""


class SharedFailure(Exception):
    """Another process asked this query for this slot a moment ago and it failed:
    not asked again by every process in turn. ``status``: Prometheus's HTTP status
    when it answered with an error (a 400 or 422 rejects the query itself), else None."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status

    def stored(self) -> bytes:
        return orjson.dumps({"reason": str(self)[:500], "status": self.status})

    @classmethod
    def from_stored(cls, raw: bytes) -> SharedFailure:
        try:
            stored = orjson.loads(raw)
            return cls(str(stored["reason"]), stored.get("status"))
        except (ValueError, TypeError, KeyError):  # a bare reason, as stored before
            return cls(raw.decode("utf-8", "replace"))


@dataclass(frozen=True)
class StoredSeries:
    """A range series as another process stored it: its labels, and its points'
    times and values as two columns of doubles.

    A fleet's range answer is tens of thousands of points, every worker process
    reads it each slot, and each process checks only some of the rollouts in it:
    building a (time, value) pair for every point of every series cost a worker
    process more than its checks' own work. The columns are read whole (one C call
    each) and the pairs are built only for the series a rollout picks.
    """

    labels: dict[str, str]
    times: array
    values: array

    def series(self) -> Series:
        return Series(self.labels, list(zip(self.times, self.values, strict=True)))


def as_series(item: Series | StoredSeries) -> Series:
    """A series of an answer as the judges read it, whichever process asked."""
    return item.series() if isinstance(item, StoredSeries) else item


@dataclass(frozen=True)
class CachedAnswer:
    """What a batched query answered, as stored for other processes. ``series``
    holds what this process asked (``Series``) or read (``StoredSeries``)."""

    evaluated_at: datetime
    samples: list[Sample]
    series: Sequence[Series | StoredSeries]


def encode(answer: CachedAnswer) -> bytes:
    """Compact JSON, compressed (a fleet's answer is hundreds of KB of labels).
    Written and read with orjson: every worker process reads every answer of every
    slot, and a fleet's range answers are tens of thousands of numbers. A range
    series is stored as its labels, its times and its values (columns: read three
    times faster than a list of pairs, and into two arrays rather than a Python
    object per point). JSON has no NaN or infinity, so those travel as Prometheus
    writes them: "NaN", "+Inf", "-Inf"."""
    series = [as_series(item) for item in answer.series]
    document = {
        "at": answer.evaluated_at.isoformat(),
        "samples": [[s.labels, _json_number(s.value)] for s in answer.samples],
        "series": [
            [
                s.labels,
                [_json_number(t) for t, _ in s.points],
                [_json_number(v) for _, v in s.points],
            ]
            for s in series
        ],
    }
    return zlib.compress(orjson.dumps(document), 1)


def decode(raw: bytes, evaluated_at: datetime | None = None) -> CachedAnswer:
    """The stored answer, checked: labels are maps, values numbers, a series' two
    columns of one length, and (given ``evaluated_at``) it is the answer of that
    slot. Raises ``ValueError`` for anything else, whatever wrote it."""
    try:
        document = orjson.loads(zlib.decompress(raw))
        answer = CachedAnswer(
            evaluated_at=datetime.fromisoformat(document["at"]),
            samples=[Sample(_labels(labels), _number(v)) for labels, v in document["samples"]],
            series=[_stored_series(*row) for row in document["series"]],
        )
    except (ValueError, TypeError, KeyError, AttributeError, zlib.error) as exc:
        raise ValueError(f"not a stored answer: {type(exc).__name__}: {exc}") from None
    if evaluated_at is not None and answer.evaluated_at != evaluated_at:
        raise ValueError(
            f"stored answer of {answer.evaluated_at.isoformat()}, "
            f"expected {evaluated_at.isoformat()}"
        )
    return answer


def _stored_series(labels: object, times: object, values: object) -> StoredSeries:
    series = StoredSeries(_labels(labels), _column(times), _column(values))
    if len(series.times) != len(series.values):
        raise ValueError(f"{len(series.times)} times for {len(series.values)} values")
    return series


def _column(numbers: object) -> array:
    """A stored column as doubles: at C speed when every entry is a number (the
    usual case), entry by entry when one is a word for NaN or an infinity (or
    is not a number, which is refused)."""
    if type(numbers) is not list:
        raise TypeError("a column is not a list")
    try:
        return array("d", numbers)
    except TypeError:
        return array("d", [_number(n) for n in numbers])


# Celery and kombu take ``ssl_cert_reqs=CERT_REQUIRED`` in a broker URL (the ssl
# module's names); redis-py takes only its own words and refuses the others at the
# first command, which would leave a TLS broker's workers never sharing an answer.
_CERT_REQS = {"CERT_REQUIRED": "required", "CERT_OPTIONAL": "optional", "CERT_NONE": "none"}


def redis_py_url(url: str) -> str:
    """The broker URL as redis-py reads it (``ssl_cert_reqs`` in its own words)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [
        (name, _CERT_REQS.get(value, value) if name == "ssl_cert_reqs" else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _labels(value: object) -> dict[str, str]:
    # A map, or nothing picks from it. Its keys are text (JSON's are); a value that
    # is not text matches no rollout's label value, so it is never picked.
    if type(value) is not dict:
        raise TypeError("labels are not a map")
    return value


_NOT_FINITE = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}


def _json_number(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _number(value: object) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    if type(value) is str and value in _NOT_FINITE:
        return _NOT_FINITE[value]
    raise TypeError(f"not a number: {value!r}")


class RedisAnswerCache:
    """Batched answers shared through one Redis (the broker's, by default).

    ``namespace`` keeps two installations (two Prometheus servers) on one Redis
    apart; ``claim_seconds`` is how long the asker may take (the provider's
    timeouts and retries), and how long a process waits for another's answer
    before it asks itself.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        claim_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        # Only its digest is kept: the namespace may hold a URL with credentials.
        self.namespace = hashlib.sha256(namespace.encode()).hexdigest()
        self.claim_seconds = claim_seconds
        self.clock = clock
        self._paused_until = 0.0

    @classmethod
    def from_url(cls, url: str, namespace: str, claim_seconds: float) -> RedisAnswerCache:
        client = redis.Redis.from_url(
            redis_py_url(url), socket_timeout=1.0, socket_connect_timeout=1.0
        )
        return cls(client, namespace, claim_seconds)

    def key(self, parts: tuple) -> str:
        digest = hashlib.sha256(repr((self.namespace, parts)).encode()).hexdigest()[:32]
        return KEY_PREFIX + digest

    def get_or_ask(
        self,
        parts: tuple,
        ask: Callable[[], CachedAnswer],
        keep: timedelta,
        evaluated_at: datetime | None = None,
    ) -> CachedAnswer:
        """The answer for ``parts`` (query, slot…): another process's, or ``ask()``'s
        (stored for the others for ``keep``). Errors of ``ask`` propagate, with the
        claim given back; errors of Redis or of a stored answer raise
        ``AnswerCacheError`` before ``ask`` was called, never after."""
        if self.clock() < self._paused_until:
            raise AnswerCacheError("Redis failed a moment ago: not tried again yet")
        key = self.key(parts)
        claim = key + ":claim"
        token = secrets.token_hex(8)
        try:
            claimed = self._answer_or_claim(key, claim, token, evaluated_at)
        except timeouts.out_of_time():
            raise
        except Exception as exc:  # redis-py, a bad URL option, a bad stored answer
            self._paused_until = self.clock() + PAUSE_AFTER_FAILURE_SECONDS
            raise AnswerCacheError(f"{type(exc).__name__}: {exc}") from exc
        if isinstance(claimed, CachedAnswer):
            return claimed
        if isinstance(claimed, SharedFailure):
            raise claimed
        try:
            answer = ask()
        except timeouts.out_of_time():
            self._give_back(claim, token, claimed)
            raise
        except Exception as exc:
            status = exc.status if isinstance(exc, MetricsError) else None
            self._say_failed(key, SharedFailure(f"{type(exc).__name__}: {exc}", status))
            self._give_back(claim, token, claimed)
            raise
        try:
            self.client.set(key, encode(answer), px=self._ms(keep.total_seconds()))
        except Exception as exc:  # a check never fails for want of sharing
            log.warning("could not share a batched answer", error=f"{type(exc).__name__}: {exc}")
        self._give_back(claim, token, claimed)
        return answer

    def _answer_or_claim(
        self, key: str, claim: str, token: str, evaluated_at: datetime | None
    ) -> CachedAnswer | SharedFailure | bool:
        """Another process's answer (or its failure), or True once this process
        holds the claim, or False when the wait is over without either (the caller
        asks unclaimed)."""
        deadline = self.clock() + self.claim_seconds
        poll = POLL_SECONDS
        while True:
            raw, failed = self.client.mget(key, key + ":failed")
            if raw is not None:
                return decode(raw, evaluated_at)
            if failed is not None:
                return SharedFailure.from_stored(failed)
            if self.client.set(claim, token, nx=True, px=self._ms(self.claim_seconds)):
                return True
            if self.clock() >= deadline:
                return False  # the claimant is stuck or gone: ask, but never wait longer
            time.sleep(poll)
            poll = min(poll * 2, MAX_POLL_SECONDS)

    def _say_failed(self, key: str, failure: SharedFailure) -> None:
        """Tell the processes waiting for this answer that it failed, for as long as
        a claim lasts: they measure another way at once instead of asking in turn."""
        try:
            self.client.set(key + ":failed", failure.stored(), px=self._ms(self.claim_seconds))
        except Exception as exc:  # they ask themselves after their wait
            log.warning("could not share a failure", error=f"{type(exc).__name__}: {exc}")

    def _give_back(self, claim: str, token: str, claimed: bool) -> None:
        if not claimed:
            return
        try:
            self.client.eval(_RELEASE, 1, claim, token)
        except Exception as exc:  # it expires on its own
            log.warning("could not give a claim back", error=f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))
