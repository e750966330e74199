"""What the engine needs from the outside world, built once per process.

Workers, the CLI and the tests build a ``Runtime``; the engine and the rollback
only ever talk to these parts, so each can be replaced in a unit test and is the
real thing everywhere else.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from controller.analysis.answer_cache import RedisAnswerCache
from controller.analysis.batching import SharedAnswers
from controller.analysis.runner import MetricsProvider
from controller.clock import utcnow
from controller.incidents import post_incident
from controller.metrics.prometheus import PrometheusProvider, RetryPolicy
from controller.plan import Plan, render_template
from controller.store.db import session_factory
from controller.traffic.base import TrafficRouter
from controller.traffic.haproxy import HAProxyRouter


def worker_identity() -> str:
    """Who holds a lease: the host and process, and a token unique to this start (a
    restarted process may get the pid of the dead one, and must not inherit its
    leases)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


RouterFactory = Callable[[Plan, dict[str, str]], TrafficRouter]


@dataclass
class Runtime:
    sessions: sessionmaker[Session]
    metrics: MetricsProvider
    router_for: RouterFactory
    lease: timedelta = timedelta(seconds=45)
    rollback_attempts: int = 5
    rollback_backoff_seconds: float = 0.2
    clock: Callable[[], datetime] = utcnow
    owner: str = field(default_factory=worker_identity)
    enqueue_rollback: Callable[[str], None] = lambda rollout_id: None
    post_incident: Callable[[dict[str, Any]], str] = lambda document: "no incident webhook"
    # Outbox rows (runbooks, lifecycle notifications) go out of band: in workers a
    # task on the runbook or notify queue, so that a slow runbook or a dead endpoint
    # never delays a step, let alone a rollback. In-process by default.
    # None: run the row in this process (``controller.outbox.send_row``).
    send_outbox: Callable[[int, str, str], object] | None = None
    # Answers of stop-criterion queries shared by every rollout this process checks
    # (controller.analysis.batching); None asks each rollout's queries on their own.
    shared_answers: SharedAnswers | None = None
    # Each rollout's checks at a phase of its own within the interval
    # (``controller.check_clock``), so rollouts started together are not all due in
    # the same second. Off here (a step's first check exactly one interval after it
    # began, as the unit tests' clocks expect); the workers' setting turns it on.
    spread_checks: bool = False
    # How long a runbook's delivery holds its outbox row between renewals, and when a
    # row not done is sent again (``controller.outbox``); None: that module's defaults.
    runbook_claim: timedelta | None = None
    outbox_redispatch: timedelta | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        metrics = PrometheusProvider(
            settings.prometheus_url,
            timeout_seconds=settings.prometheus_timeout_seconds,
            retry=RetryPolicy(attempts=settings.prometheus_attempts),
        )
        return cls(
            sessions=session_factory(settings.database_url),
            metrics=metrics,
            shared_answers=shared_answers(settings),
            router_for=router_factory(settings),
            lease=timedelta(seconds=settings.lease_seconds),
            rollback_attempts=settings.rollback_attempts,
            rollback_backoff_seconds=settings.rollback_backoff_seconds,
            spread_checks=settings.spread_checks,
            runbook_claim=timedelta(seconds=settings.runbook_claim_seconds),
            outbox_redispatch=timedelta(seconds=settings.outbox_redispatch_seconds),
            post_incident=partial(
                post_incident,
                _secret(settings.incident_webhook_url),
                _secret(settings.incident_webhook_token),
            ),
        )


def shared_answers(settings: Settings) -> SharedAnswers | None:
    """Batched answers for this process: none when batching is off; shared with the
    other worker processes through the broker's Redis when it is a plain Redis URL."""
    slot = settings.query_batch_slot_seconds
    if slot <= 0:
        return None
    # A batched query does the work of every rollout's query at once, and no check
    # waits for it while the previous slot's answer serves: it may take up to a slot,
    # not one rollout's timeout (at a thousand services, a histogram quantile over
    # all of them took 1.6 to 2.2 s on a busy 2-core machine).
    timeout = max(settings.prometheus_timeout_seconds, slot)
    retry = RetryPolicy(attempts=settings.prometheus_attempts)
    batched = PrometheusProvider(settings.prometheus_url, timeout_seconds=timeout, retry=retry)
    fleet = None
    if settings.share_query_answers and urlsplit(settings.broker_url).scheme in ("redis", "rediss"):
        backoff = sum(retry.delay_after(n) for n in range(1, retry.attempts))
        fleet = RedisAnswerCache.from_url(
            settings.broker_url,
            namespace=f"{settings.queue_prefix} {settings.prometheus_url}",
            claim_seconds=timeout * retry.attempts + backoff + 1.0,
        )
    # A check at a slot's start judges the previous slot's answer while the slot's is
    # fetched, rather than every check of every worker waiting for it.
    return SharedAnswers(batched, timedelta(seconds=slot), fleet=fleet, serve_previous=True)


def router_factory(settings: Settings) -> RouterFactory:
    """Routers of this installation (HAProxy through its runtime-API socket)."""
    return haproxy_router_factory(settings.haproxy_socket, settings.haproxy_timeout_seconds)


def haproxy_router_factory(socket_path: str, timeout: float = 2.0) -> RouterFactory:
    """The plan's HAProxy backend, with the rollout's slots (``stable_slot`` and
    ``canary_slot`` template values) as its two servers."""

    def haproxy_router(plan: Plan, variables: dict[str, str]) -> TrafficRouter:
        return HAProxyRouter(
            socket_path,
            backend=render_template(plan.traffic.backend, variables),
            stable_server=variables.get("stable_slot", plan.traffic.stable_server),
            canary_server=variables.get("canary_slot", plan.traffic.canary_server),
            timeout=timeout,
        )

    return haproxy_router


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
