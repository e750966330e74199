"""A rollback that lands while an advance is in flight, on real HAProxy, PostgreSQL,
Prometheus and demo services.

The interleaving is what the review found: an alert's rollback arrives while the
broker is down, so the API shifts traffic itself (0 %, read back from HAProxy) but
cannot take the lease of an advance that is about to raise the canary's weight.
The advance raises it, loses its commit, and must put the weight back to 0 at once:
nobody else would, with the broker down. The advance runs in this process, so the
rollback can be made to land at exactly that moment; everything it talks to is real.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from controller.engine import advance
from controller.metrics.prometheus import PrometheusProvider
from controller.operations import rollback_rollout
from controller.rollback import rollback
from controller.runtime import Runtime, utcnow
from controller.store import repository
from controller.store.db import session_factory
from controller.traffic.base import Serving, TrafficRouter
from tests.integration.rollout_helpers import begin, deploy, snapshot, start_lab, versions_served

pytestmark = pytest.mark.integration


class ArmedRouter:
    """The real HAProxy router, with something that happens just before the next
    raise of the canary's weight to ``at`` (once)."""

    def __init__(self, real: TrafficRouter, at: int, before: list[Callable[[], None]]):
        self.real, self.at, self.before = real, at, before

    def set_canary_weight(self, weight: int) -> None:
        if weight == self.at and self.before:
            self.before.pop()()
        self.real.set_canary_weight(weight)

    def get_canary_weight(self) -> int:
        return self.real.get_canary_weight()

    def serving(self, role: str) -> Serving:
        return self.real.serving(role)


def broker_down(rollout_id: str) -> None:
    raise ConnectionError("Redis: connection refused")


def test_an_api_rollback_during_an_advance_in_flight_ends_with_traffic_on_stable(
    tmp_path: Path, postgres_url: str
) -> None:
    lab = start_lab(tmp_path, postgres_url)
    try:
        assert lab.prometheus is not None
        armed: list[Callable[[], None]] = []
        worker = Runtime(
            sessions=session_factory(lab.database_url),
            metrics=PrometheusProvider(lab.prometheus.url, timeout_seconds=2.0),
            router_for=lambda plan, values: ArmedRouter(lab.router_for(plan, values), 25, armed),
            owner="rollouts-worker",
            rollback_backoff_seconds=0.05,
            enqueue_rollback=broker_down,
        )
        # The API's runtime when the broker is down: it shifts traffic itself.
        api = replace(worker, owner="api", router_for=lab.router_for)
        version = deploy(lab)
        rollout_id = begin(lab, version)
        stable = snapshot(lab, rollout_id)[0].stable_version

        def alert_rollback_with_the_broker_down() -> None:
            with session_factory(lab.database_url)() as session:
                rollback_rollout(session, rollout_id, reason="alert", actor="api", now=utcnow())
            rollback(api, rollout_id)  # shifted and read back; the lease is the advance's
            assert lab.router().get_canary_weight() == 0

        armed.append(alert_rollback_with_the_broker_down)
        advance_until(worker, lab.database_url, rollout_id, lambda: not armed, timeout=90)

        assert lab.router().get_canary_weight() == 0  # not the 25 % the advance set
        rollout, events = snapshot(lab, rollout_id)
        assert rollout.state == "rolling_back"
        undone = [e for e in events if e.kind == "weight_set" and e.data.get("previous") == 25]
        assert undone and undone[-1].data["weight"] == 0
        rollback(api, rollout_id)  # what reconcile would dispatch once the broker is back
        rollout, _ = snapshot(lab, rollout_id)
        assert rollout.state == "rolled_back" and rollout.weight == 0
        assert versions_served(lab) == {stable}
    finally:
        lab.stop()


def advance_until(
    runtime: Runtime,
    database_url: str,
    rollout_id: str,
    done: Callable[[], bool],
    timeout: float,
) -> None:
    """Advance the rollout in this process whenever it is due, until ``done``."""
    deadline = time.monotonic() + timeout
    sessions = session_factory(database_url)
    while not done():
        assert time.monotonic() < deadline, snapshot_tail(database_url, rollout_id)
        with sessions() as session:
            due = repository.get_rollout(session, rollout_id).next_check_at
        wait = (due - utcnow()).total_seconds()
        if wait > 0:
            time.sleep(min(wait, 0.5))
            continue
        advance(runtime, rollout_id)


def snapshot_tail(database_url: str, rollout_id: str) -> str:
    with session_factory(database_url)() as session:
        events = repository.events_for(session, rollout_id)
        return "; ".join(f"{e.kind}: {e.message}" for e in list(events)[-6:])
