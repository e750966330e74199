"""A runbook runs once on the real stack: Celery workers on real Redis, the store on
real PostgreSQL, beat firing reconcile every half second, real HAProxy.

The runbook's claim is 3 s and reconcile sends again, after 1 s, any outbox row not
done and not held; the stable service's healthchecks answer slowly, so step 2
alone takes longer than the claim. The delivery's heartbeat holds the row: no
second delivery runs it, each step is logged once, each healthcheck is asked once
and the incident is posted once. (Before the claim was renewed while a step ran,
reconcile sent the row again in step 2 and a second delivery ran the runbook from
step 1 beside the first.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from controller.operations import rollback_rollout
from controller.plan import Plan
from controller.runtime import utcnow
from controller.store.db import session_factory
from controller.store.models import Event, Outbox, Rollout
from tests.integration.rollout_helpers import (
    PLAN,
    at_canary,
    begin,
    controller_lab,
    deploy,
    snapshot,
    wait_for,
)
from tests.local_http import answer_ok, serve

pytestmark = pytest.mark.integration

CLAIM_SECONDS = 3
ANSWER_SECONDS = 2.5  # each slow healthcheck's; three of them: step 2 outlasts the claim
HEALTHCHECKS = 3


class SlowStable:
    """The stable service's health endpoints, answering after ``ANSWER_SECONDS``,
    and the incident webhook; ``hits`` counts requests by path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.incidents: list[str] = []
        hits, incidents, lock = self.hits, self.incidents, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                with lock:
                    hits[self.path] = hits.get(self.path, 0) + 1
                time.sleep(ANSWER_SECONDS)  # a slow service, not a measurement
                self._answer()

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    incidents.append(body.decode())
                self._answer()

            def _answer(self) -> None:
                answer_ok(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server, self.url = serve(Handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_stable() -> Iterator[SlowStable]:
    server = SlowStable()
    try:
        yield server
    finally:
        server.close()


def runbook_acknowledged(database_url: str) -> Callable[[Rollout, list[Event]], bool]:
    """Whether a rollout's runbook row is done: no delivery may take it any more."""

    def done(rollout: Rollout, _events: list[Event]) -> bool:
        with session_factory(database_url)() as session:
            rows = session.query(Outbox).filter_by(rollout_id=rollout.id, kind="runbook").all()
            return bool(rows) and all(row.done_at is not None for row in rows)

    return done


def test_a_runbook_longer_than_its_claim_runs_once_while_reconcile_runs(
    tmp_path: Path, slow_stable: SlowStable
) -> None:
    env = {
        "CANARY_RUNBOOK_CLAIM_SECONDS": str(CLAIM_SECONDS),
        "CANARY_OUTBOX_REDISPATCH_SECONDS": "1",
        "CANARY_INCIDENT_WEBHOOK_URL": f"{slow_stable.url}/incident",
    }
    with controller_lab(tmp_path, extra_env=env) as lab:
        data = PLAN.model_dump(mode="json")
        data["runbook"]["stable_healthchecks"] = [
            {"name": f"slow-{n}", "url": f"{slow_stable.url}/health/{n}", "timeout": "10s"}
            for n in range(1, HEALTHCHECKS + 1)
        ]
        rollout_id = begin(lab, deploy(lab), plan=Plan.from_data(data))
        wait_for(lab, rollout_id, at_canary)
        with session_factory(lab.database_url)() as session:
            assert rollback_rollout(
                session, rollout_id, reason="slow stable", actor="pytest", now=utcnow()
            ).accepted
        rollout = wait_for(lab, rollout_id, runbook_acknowledged(lab.database_url), timeout=120)
        _, events = snapshot(lab, rollout_id)

    steps = [e for e in events if e.kind == "runbook"]
    assert [e.data["step"] for e in steps] == [1, 2, 3, 4, 5], [e.message for e in steps]
    assert all(e.data["ok"] for e in steps), [e.message for e in steps]
    assert slow_stable.hits == {f"/health/{n}": 1 for n in range(1, HEALTHCHECKS + 1)}
    [incident] = slow_stable.incidents
    assert steps[4].data["incident_id"] in incident
    assert not [e for e in events if e.kind in ("runbook_skipped", "outbox_expired")]
    assert rollout.state == "rolled_back"
