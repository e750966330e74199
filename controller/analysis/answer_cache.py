"""Answers of batched queries shared by every worker process, through Redis.

``SharedAnswers`` asks a batched query once per slot *per process*. Celery's
prefork pool runs several processes per worker and a fleet runs several workers,
so a query that answers a thousand rollouts would still be asked by every one of
them, each slot: at 1,000 rollouts that alone kept Prometheus busy on both cores
of a small machine. Here one process per slot asks; the others read its answer.

The protocol per (query, slot): read the answer; if none, claim the right to ask
(``SET NX`` with an expiry); the claimant asks Prometheus and stores the answer
(compressed, expiring a few slots later); the others poll for it until the claim
expires or disappears, and then ask themselves. A failure is never stored: the
next asker tries again. Redis failing costs sharing, never a check: every error
here falls back to asking Prometheus directly (``AnswerCacheError``).

Keys are flat in the number of rollouts: one answer and at most one claim per
distinct batched query and slot, each expiring on its own.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
import structlog

from controller.metrics.prometheus import Sample, Series

log = structlog.get_logger(__name__)

KEY_PREFIX = "canary:answer:"
POLL_SECONDS = 0.02


class AnswerCacheError(Exception):
    """The shared cache could not be used for this answer: ask Prometheus directly."""


@dataclass(frozen=True)
class CachedAnswer:
    """What a batched query answered, as stored for other processes."""

    evaluated_at: datetime
    samples: list[Sample]
    series: list[Series]


def encode(answer: CachedAnswer) -> bytes:
    """Compact JSON, compressed (a fleet's answer is hundreds of KB of labels).
    NaN and infinities survive: Python's JSON writes and reads them."""
    document = {
        "at": answer.evaluated_at.isoformat(),
        "samples": [[s.labels, s.value] for s in answer.samples],
        "series": [[s.labels, s.points] for s in answer.series],
    }
    return zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 1)


def decode(raw: bytes) -> CachedAnswer:
    document = json.loads(zlib.decompress(raw))
    return CachedAnswer(
        evaluated_at=datetime.fromisoformat(document["at"]),
        samples=[Sample(labels=labels, value=float(v)) for labels, v in document["samples"]],
        series=[
            Series(labels=labels, points=[(float(t), float(v)) for t, v in points])
            for labels, points in document["series"]
        ],
    )


class RedisAnswerCache:
    """Batched answers shared through one Redis (the broker's, by default).

    ``namespace`` keeps two installations (two Prometheus servers) on one Redis
    apart; ``claim_seconds`` is how long the asker may take (the provider's
    timeouts and retries), after which a waiting process asks itself.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        claim_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.claim_seconds = claim_seconds
        self.clock = clock
        self.asked_here = 0  # answers this process asked Prometheus for and stored
        self.read_here = 0  # answers this process took from another one

    @classmethod
    def from_url(cls, url: str, namespace: str, claim_seconds: float) -> RedisAnswerCache:
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return cls(client, namespace, claim_seconds)

    def key(self, parts: tuple) -> str:
        digest = hashlib.sha256(repr((self.namespace, parts)).encode()).hexdigest()[:32]
        return KEY_PREFIX + digest

    def get_or_ask(
        self, parts: tuple, ask: Callable[[], CachedAnswer], keep: timedelta
    ) -> CachedAnswer:
        """The answer for ``parts`` (query, slot…): another process's, or ``ask()``'s
        (stored for the others for ``keep``). Errors of ``ask`` propagate; errors of
        Redis raise ``AnswerCacheError`` before ``ask`` was called, never after."""
        key = self.key(parts)
        claim = key + ":claim"
        try:
            known = self._read(key)
            if known is not None:
                return known
            claimed = bool(self.client.set(claim, b"1", nx=True, px=self._ms(self.claim_seconds)))
            if not claimed:
                waited = self._wait_for(key, claim)
                if waited is not None:
                    return waited
        except (redis.RedisError, OSError, ValueError, zlib.error) as exc:
            raise AnswerCacheError(f"{type(exc).__name__}: {exc}") from exc
        # Ours to ask: the claim was ours, or its holder gave up without an answer.
        answer = ask()
        self.asked_here += 1
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(key, encode(answer), px=self._ms(keep.total_seconds()))
            pipe.delete(claim)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("could not share a batched answer", error=f"{type(exc).__name__}: {exc}")
        return answer

    def _wait_for(self, key: str, claim: str) -> CachedAnswer | None:
        """Poll for the claimant's answer while its claim lasts (bounded by
        ``claim_seconds`` on this process's clock too, whatever Redis says)."""
        deadline = self.clock() + self.claim_seconds
        while self.clock() < deadline:
            time.sleep(POLL_SECONDS)
            pipe = self.client.pipeline(transaction=False)
            pipe.get(key)
            pipe.exists(claim)
            raw, still_claimed = pipe.execute()
            if raw is not None:
                self.read_here += 1
                return decode(raw)
            if not still_claimed:
                return None  # the claimant failed: the caller asks
        return None

    def _read(self, key: str) -> CachedAnswer | None:
        raw = self.client.get(key)
        if raw is None:
            return None
        self.read_here += 1
        return decode(raw)

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))
