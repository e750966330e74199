"""A runbook runs once: on a real SQLite store with a fake clock, router and metrics.

A delivery holds its outbox row for as long as it runs, however long one step takes
(a heartbeat renews its claim); each step has a time budget; a delivery that died
is resumed by the next one at the first step it did not record; the incident is
opened and posted once. The real-stack version, with a Celery worker and reconcile
running, is ``tests/integration/test_runbook_once.py``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from controller import outbox, runbook
from controller.plan import Plan
from controller.runtime import Runtime
from controller.store import repository
from controller.store.models import Event, Incident, Outbox
from tests.local_http import answer_ok, serve
from tests.unit.test_outbox_and_dispatch import (
    rolled_back_with_messages_lost,
    with_every_runbook_step,
)
from tests.unit.test_state_machine import make_plan, state


class Killed(BaseException):
    """The worker process killed where this is raised: no ``except Exception``
    sees it, nothing after it runs, and the delivery's heartbeat stops with it."""


def runbook_row(runtime: Runtime, rollout_id: str) -> int:
    with runtime.sessions() as session:
        return session.query(Outbox).filter_by(rollout_id=rollout_id, kind="runbook").one().id


def claimed_until(runtime: Runtime, row_id: int) -> datetime:
    with runtime.sessions() as session:
        row = repository.get_outbox(session, row_id)
        assert row is not None and row.claimed_until is not None
        return row.claimed_until.replace(tzinfo=runtime.clock().tzinfo)


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``condition`` came true within ``seconds`` (it is about another thread)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def step_events(runtime: Runtime, rollout_id: str) -> list[Event]:
    _, events = state(runtime, rollout_id)
    return [e for e in events if e.kind == "runbook"]


def assert_each_step_logged_once(runtime: Runtime, rollout_id: str) -> dict[int, Event]:
    numbers = [e.data["step"] for e in step_events(runtime, rollout_id)]
    assert numbers == [1, 2, 3, 4, 5], f"steps logged {numbers}"
    return {e.data["step"]: e for e in step_events(runtime, rollout_id)}


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beats every 10 ms of real time, so a test need not wait a third of a claim."""
    monkeypatch.setattr(outbox, "heartbeat_every", lambda length: 0.01, raising=False)


def test_a_step_longer_than_the_claim_is_not_run_by_a_second_delivery(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_heartbeat: None
) -> None:
    """Step 2 takes one and a half claims (the fake clock moves while it runs). A
    redelivery at each half claim finds the row held, and reconcile does not send
    it again: the healthchecks run once, each step is logged once."""
    runtime, _, _, clock, _ = world
    plan = with_every_runbook_step(make_plan(), tmp_path / "disabled")
    rollout_id = rolled_back_with_messages_lost(runtime, clock, plan)
    row_id = runbook_row(runtime, rollout_id)
    claim = outbox.claim_for(runtime, "runbook")
    runs: list[str] = []
    meanwhile: list[tuple[str, bool]] = []

    def slow_checks(checks, values, seconds=None):  # type: ignore[no-untyped-def]
        runs.append(checks[0].name)
        if len(runs) > 1:  # a second delivery got this far
            return True, "checked again"
        for _ in range(3):
            clock.now += claim / 2
            # The heartbeat holds the row from the new now on.
            wait_until(lambda: claimed_until(runtime, row_id) > clock.now + claim / 2)
            redispatched = row_id in outbox.dispatch_due(runtime)
            meanwhile.append((outbox.run_outbox_row(runtime, row_id), redispatched))
        return True, "answered, slowly"

    monkeypatch.setattr(runbook, "run_checks", slow_checks)
    outcome = outbox.run_outbox_row(runtime, row_id)

    held = f"outbox {row_id}: another delivery is running it"
    assert meanwhile == [(held, False)] * 3
    assert runs == ["health", "journey"]  # step 2's checks once, then step 3's
    assert outcome == "runbook: 5 step(s) ok"
    assert_each_step_logged_once(runtime, rollout_id)


def test_a_delivery_that_lost_its_row_records_nothing_more(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_heartbeat: None
) -> None:
    """While step 2 runs, the row is claimed by another delivery (this one stalled
    past its claim): it records no step after that, and leaves the row to the other,
    which resumes at step 2."""
    runtime, _, _, clock, _ = world
    plan = with_every_runbook_step(make_plan(), tmp_path / "disabled")
    rollout_id = rolled_back_with_messages_lost(runtime, clock, plan)
    row_id = runbook_row(runtime, rollout_id)
    taken = clock.now + timedelta(hours=1)

    def checks_while_another_takes_the_row(checks, values, seconds=None):  # type: ignore[no-untyped-def]
        with runtime.sessions() as session:
            session.execute(update(Outbox).where(Outbox.id == row_id).values(claimed_until=taken))
            session.commit()
        return True, "ok"

    monkeypatch.setattr(runbook, "run_checks", checks_while_another_takes_the_row)
    outcome = outbox.run_outbox_row(runtime, row_id)

    assert "another delivery took the row over" in outcome
    assert [e.data["step"] for e in step_events(runtime, rollout_id)] == [1]
    with runtime.sessions() as session:
        row = repository.get_outbox(session, row_id)
        assert row.done_at is None and row.claimed_until.replace(tzinfo=None) == taken.replace(
            tzinfo=None
        )


@pytest.mark.parametrize("killed_in", ["the disable hook", "the incident post"])
def test_a_delivery_killed_is_resumed_by_the_next_at_the_step_it_reached(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_in: str
) -> None:
    """The first delivery recorded steps 1 to 3 and was killed in step 4 (or in step
    5, after the incident was stored, before it was posted). Its row is free again
    one claim later; reconcile sends it, and the next delivery runs only what was
    not recorded: each step is logged once, one incident is opened and posted once."""
    runtime, _, _, clock, _ = world
    plan = with_every_runbook_step(make_plan(), tmp_path / "disabled")
    rollout_id = rolled_back_with_messages_lost(runtime, clock, plan)
    row_id = runbook_row(runtime, rollout_id)
    checked: list[str] = []
    hooks: list[str] = []
    posts: list[str] = []

    def checks(checks, values, seconds=None):  # type: ignore[no-untyped-def]
        checked.append(checks[0].name)
        return True, "ok"

    def disable(hook, values):  # type: ignore[no-untyped-def]
        hooks.append("disable")
        if killed_in == "the disable hook" and len(hooks) == 1:
            raise Killed
        return True, "disabled"

    def post(document: dict[str, Any]) -> str:
        if killed_in == "the incident post" and not posts:
            posts.append("killed before it left")
            raise Killed
        posts.append(document["id"])
        return "posted: HTTP 200"

    monkeypatch.setattr(runbook, "run_checks", checks)
    monkeypatch.setattr(runbook, "disable_canary", disable)
    runtime.post_incident = post

    with pytest.raises(Killed):
        outbox.run_outbox_row(runtime, row_id)
    assert outbox.dispatch_due(runtime) == []  # its claim still holds the row
    clock.now += outbox.claim_for(runtime, "runbook") + timedelta(seconds=1)
    assert outbox.dispatch_due(runtime) == [row_id]
    outcome = outbox.run_outbox_row(runtime, row_id)

    steps = assert_each_step_logged_once(runtime, rollout_id)
    assert checked == ["health", "journey"]
    resumed_at = 4 if killed_in == "the disable hook" else 5
    assert outcome == f"runbook (resumed at step {resumed_at}): {6 - resumed_at} step(s) ok"
    assert hooks == (["disable", "disable"] if resumed_at == 4 else ["disable"])
    with runtime.sessions() as session:
        [incident] = session.query(Incident).filter_by(rollout_id=rollout_id).all()
    assert [p for p in posts if p.startswith("inc-")] == [incident.id]
    assert steps[5].data["incident_id"] == incident.id
    assert incident.webhook_status == "posted: HTTP 200"


class HeldEndpoint:
    """A loopback HTTP server: ``/held`` answers after two seconds, ``/fast`` at once.
    ``hits`` counts the requests each path got."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        hits, released = self.hits, threading.Event()
        self.released = released

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                hits[self.path] = hits.get(self.path, 0) + 1
                if self.path.startswith("/held"):
                    released.wait(2)
                answer_ok(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server, self.url = serve(Handler)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[HeldEndpoint]:
    server = HeldEndpoint()
    try:
        yield server
    finally:
        server.close()


def test_each_step_has_a_budget_and_a_step_over_it_fails_and_the_next_runs(
    world, endpoint: HeldEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 2's three healthchecks could each wait 20 s; they share the step's budget
    (here half a second): the first waits what is left of it, the others are not
    run, and the step is FAILED with why. The hook is ended at its own timeout.
    Steps 3 and 5 still run."""
    monkeypatch.setattr(runbook, "CHECKS_BUDGET", timedelta(seconds=0.5), raising=False)
    runtime, _, _, clock, _ = world
    data = make_plan().model_dump(mode="json")
    data["runbook"] = {
        "stable_healthchecks": [
            {"name": f"held-{n}", "url": f"{endpoint.url}/held/{n}", "timeout": "20s"}
            for n in (1, 2, 3)
        ],
        "smoke_checks": [{"name": "journey", "url": f"{endpoint.url}/fast"}],
        "disable_canary": {"command": ["/bin/sleep", "30"], "timeout": "200ms"},
    }
    rollout_id = rolled_back_with_messages_lost(runtime, clock, Plan.from_data(data))

    outcome = outbox.run_outbox_row(runtime, runbook_row(runtime, rollout_id))

    steps = assert_each_step_logged_once(runtime, rollout_id)
    assert not steps[2].data["ok"], steps[2].message
    detail = steps[2].data["detail"]
    assert re.search(r"held-1: no answer within 0\.[1-5]s, what was left of the budget", detail)
    assert "held-2: not run, the 0.5s budget is spent" in detail
    assert "held-3: not run, the 0.5s budget is spent" in detail
    assert endpoint.hits == {"/held/1": 1, "/fast": 1}
    assert steps[3].data["ok"] and not steps[4].data["ok"]
    assert "TimeoutExpired" in steps[4].data["detail"] or "timed out" in steps[4].data["detail"]
    assert steps[5].data["ok"]
    assert outcome.startswith("runbook: 5 step(s), failed: 2 confirm stable healthchecks, 4 ")


def test_a_step_that_ignores_its_budget_is_given_up_and_the_next_runs(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a step waits on (a resolver, a hook that will not end), the runbook
    waits for it no longer than its budget and the grace: it is FAILED, saying so."""
    monkeypatch.setattr(runbook, "CHECKS_BUDGET", timedelta(0), raising=False)
    monkeypatch.setattr(runbook, "OVERRUN_GRACE", timedelta(seconds=0.2), raising=False)
    runtime, _, _, clock, _ = world
    stuck = threading.Event()
    data = make_plan().model_dump(mode="json")
    data["runbook"] = {"stable_healthchecks": [{"name": "h", "url": "http://127.0.0.1:9/"}]}
    rollout_id = rolled_back_with_messages_lost(runtime, clock, Plan.from_data(data))

    def never_ending(checks, values, seconds=None):  # type: ignore[no-untyped-def]
        stuck.wait(10)
        return True, "too late"

    monkeypatch.setattr(runbook, "run_checks", never_ending)
    try:
        outbox.run_outbox_row(runtime, runbook_row(runtime, rollout_id))
    finally:
        stuck.set()
    steps = assert_each_step_logged_once(runtime, rollout_id)
    assert not steps[2].data["ok"]
    assert steps[2].data["detail"].startswith("over its 0s budget: no result after 0.2s")
    assert steps[5].data["ok"]


def test_the_longest_runbook_fits_inside_the_task_time_limit() -> None:
    """The most a runbook can take (the longest hook a plan may have, every budget
    and grace spent) leaves the runbook task room before its soft time limit."""
    data = make_plan().model_dump(mode="json")
    data["runbook"] = {"disable_canary": {"command": ["/bin/true"], "timeout": "2m"}}
    longest = runbook.longest_seconds(Plan.from_data(data))
    assert longest == 235
    assert longest + 30 < runbook.TIME_LIMIT_SECONDS - 10
