"""Dispatch once and the outbox, on a real SQLite store with a fake clock and router.

What is checked is the bookkeeping that makes a lost message harmless: a queued
advance is not queued again until presumed lost, outbox rows are sent until done,
a duplicate delivery does nothing, and a stale runbook never acts, not even with a
step that starts after the world moved on while an earlier one ran.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from controller import outbox, runbook
from controller.engine import advance
from controller.operations import abort_rollout
from controller.plan import Plan
from controller.rollback import rollback
from controller.store import repository
from controller.store.models import Outbox
from tests.unit.test_state_machine import make_plan, start, state, with_notifications

LOST = timedelta(seconds=20)


def rolled_back_with_messages_lost(runtime, clock, plan: Plan | None = None) -> str:  # type: ignore[no-untyped-def]
    """A rollout aborted and rolled back while every broker message is lost: its
    runbook row waits in the outbox."""
    runtime.send_outbox = lambda row_id, kind, rollout_id: None
    rollout_id = start(runtime, plan or make_plan())
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        abort_rollout(session, rollout_id, reason="x", actor="a", now=clock.now)
    rollback(runtime, rollout_id)
    return rollout_id


def taken_ids(session, now):  # type: ignore[no-untyped-def]
    return [due.rollout_id for due in repository.take_due_advances(session, now, LOST)]


def test_a_queued_advance_is_queued_once_until_presumed_lost(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        assert taken_ids(session, clock.now) == [rollout_id]
        clock.now += timedelta(seconds=2)
        assert taken_ids(session, clock.now) == []
        clock.now += LOST  # the message never arrived (a broker restart)
        assert taken_ids(session, clock.now) == [rollout_id]
    advance(runtime, rollout_id)  # claiming it clears the mark
    rollout, _ = state(runtime, rollout_id)
    assert rollout.dispatched_at is None
    clock.now = rollout.next_check_at
    with runtime.sessions() as session:
        assert taken_ids(session, clock.now) == [rollout_id]


def test_a_rollback_promises_its_runbook_and_sends_it_until_done(world) -> None:
    runtime, _, router, clock, _ = world
    sent: list[tuple[int, str]] = []
    runtime.send_outbox = lambda row_id, kind, rollout_id: sent.append((row_id, kind))
    rollout_id = start(runtime, with_notifications(make_plan()))
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        abort_rollout(session, rollout_id, reason="x", actor="a", now=clock.now)
    sent.clear()
    rollback(runtime, rollout_id)
    assert router.weight == 0
    kinds = sorted(kind for _, kind in sent)
    assert kinds == ["notify", "runbook"]
    runbook_row = next(row_id for row_id, kind in sent if kind == "runbook")

    # The worker that got it died: nothing acknowledged. Reconcile sends it again,
    # not before the redispatch delay.
    sent.clear()
    assert outbox.dispatch_due(runtime) == []
    clock.now += outbox.REDISPATCH_AFTER + timedelta(seconds=1)
    assert runbook_row in outbox.dispatch_due(runtime)

    first = outbox.run_outbox_row(runtime, runbook_row)
    assert first.startswith("runbook: 5 step(s)")
    assert outbox.run_outbox_row(runtime, runbook_row).startswith("outbox")  # duplicate
    _, events = state(runtime, rollout_id)
    assert len([e for e in events if e.kind == "runbook" and e.data["step"] == 5]) == 1
    clock.now += outbox.REDISPATCH_AFTER * 2
    assert runbook_row not in outbox.dispatch_due(runtime)


def test_a_runbook_of_a_superseded_rollout_never_acts(world) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = rolled_back_with_messages_lost(runtime, clock)
    clock.now += timedelta(seconds=5)
    newer = start(runtime, make_plan())  # the next release of the service
    with runtime.sessions() as session:
        row = session.query(Outbox).filter_by(rollout_id=rollout_id, kind="runbook").one()
    outcome = outbox.run_outbox_row(runtime, row.id)
    assert outcome == f"not run: a newer rollout of api ({newer}) started since"
    _, events = state(runtime, rollout_id)
    assert not [e for e in events if e.kind == "runbook"]
    assert any(e.kind == "runbook_skipped" for e in events)


def with_every_runbook_step(plan: Plan, disabled: Path) -> Plan:
    """The plan with checks in steps 2 and 3 and a disable hook that leaves a file."""
    data = plan.model_dump(mode="json")
    data["runbook"] = {
        "stable_healthchecks": [{"name": "health", "url": "http://127.0.0.1:9/healthz"}],
        "smoke_checks": [{"name": "journey", "url": "http://127.0.0.1:9/checkout"}],
        "disable_canary": {"command": ["/bin/sh", "-c", f"touch {disabled}"]},
    }
    return Plan.from_data(data)


@pytest.mark.parametrize("meanwhile", ["nothing", "a newer rollout starts", "the row expires"])
def test_each_runbook_step_rechecks_and_the_rest_are_skipped_once_it_is_stale(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """The runbook was current when its delivery took it; while its step 2 ran, the
    next rollout of the service started (or the row's time ran out). Steps 3 to 5
    are recorded as not run, with why, and the disable hook never touches the canary
    slot, which is now the newer rollout's."""
    runtime, _, _, clock, _ = world
    disabled = tmp_path / "canary-disabled"
    plan = with_every_runbook_step(make_plan(), disabled)
    rollout_id = rolled_back_with_messages_lost(runtime, clock, plan)
    with runtime.sessions() as session:
        row = session.query(Outbox).filter_by(rollout_id=rollout_id, kind="runbook").one()
        row_id, expires_at = row.id, row.expires_at
    newer: list[str] = []

    def checks_while_the_world_moves_on(checks, values, seconds=None):  # type: ignore[no-untyped-def]
        if meanwhile == "a newer rollout starts" and not newer:  # at the same clock time
            newer.append(start(runtime, make_plan()))
        if meanwhile == "the row expires":
            clock.now = expires_at + timedelta(seconds=1)
        return True, f"{len(checks)} check(s) passed"

    monkeypatch.setattr(runbook, "run_checks", checks_while_the_world_moves_on)
    outcome = outbox.run_outbox_row(runtime, row_id)

    _, events = state(runtime, rollout_id)
    steps = {e.data["step"]: e for e in events if e.kind == "runbook"}
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert steps[2].data["ok"] and not steps[2].data.get("skipped")
    with runtime.sessions() as session:
        incident = runbook.find_incident(session, rollout_id)
    if meanwhile == "nothing":
        assert outcome == "runbook: 5 step(s) ok"
        assert disabled.exists() and incident is not None
        return
    reason = (
        f"a newer rollout of api ({newer[0]}) started since"
        if newer
        else f"expired at {expires_at.isoformat()}"
    )
    assert outcome == f"runbook: 2 step(s) ok; step(s) 3, 4, 5 not run: {reason}"
    assert not disabled.exists(), "the disable hook ran for a stale runbook"
    assert incident is None
    for number in (3, 4, 5):
        assert steps[number].data["skipped"] and steps[number].data["not_run"] == reason
        assert steps[number].message.endswith(f"skipped: not run: {reason}")
    # The row is done: stopping is its outcome, not a failure to send again.
    clock.now += outbox.REDISPATCH_AFTER * 2
    assert row_id not in outbox.dispatch_due(runtime)
    with runtime.sessions() as session:
        assert repository.get_outbox(session, row_id).outcome == outcome


def test_an_outbox_row_past_its_expiry_is_given_up_loudly(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = rolled_back_with_messages_lost(runtime, clock)
    clock.now += outbox.RUNBOOK_TTL + timedelta(seconds=1)
    assert outbox.dispatch_due(runtime) == []
    _, events = state(runtime, rollout_id)
    expired = next(e for e in events if e.kind == "outbox_expired")
    assert "runbook given up after 1 dispatch(es)" in expired.message


def test_a_row_just_written_is_sent_once_by_its_writer_not_also_by_reconcile(world) -> None:
    runtime, _, _, clock, _ = world
    sent: list[int] = []
    runtime.send_outbox = lambda row_id, kind, rollout_id: sent.append(row_id)
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        row_id = outbox.promise_notification(session, rollout_id, "started", clock.now)
        session.commit()
    # A reconcile tick between the commit and the writer's own dispatch leaves it alone.
    assert row_id not in outbox.dispatch_due(runtime)
    outbox.dispatch_now(runtime, [(row_id, "notify", rollout_id)])
    assert sent == [row_id]
    # Had the writer died before dispatching, reconcile sends it after the grace.
    sent.clear()
    with runtime.sessions() as session:
        orphan = outbox.promise_notification(session, rollout.id, "started", clock.now)
        session.commit()
    clock.now += timedelta(seconds=6)
    assert orphan in outbox.dispatch_due(runtime)
    assert sent == [orphan]
    # ...and then the writer's late dispatch does not send it a second time.
    outbox.dispatch_now(runtime, [(orphan, "notify", rollout_id)])
    assert sent == [orphan]


def test_a_row_its_writer_could_not_send_goes_within_the_grace(world) -> None:
    """The broker down when the API wrote the row: reconcile sends it seconds later,
    not after the redispatch delay meant for rows a worker may still be running."""
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())

    def broker_down(row_id: int, kind: str, rollout_id: str) -> None:
        raise ConnectionError("broker unreachable")

    runtime.send_outbox = broker_down
    with runtime.sessions() as session:
        row_id = outbox.promise_notification(session, rollout_id, "started", clock.now)
        session.commit()
    outbox.dispatch_now(runtime, [(row_id, "notify", rollout_id)])  # does not raise
    sent: list[int] = []
    runtime.send_outbox = lambda row_id, kind, rollout_id: sent.append(row_id)
    assert outbox.dispatch_due(runtime) == []
    clock.now += timedelta(seconds=6)
    assert outbox.dispatch_due(runtime) == [row_id]
    assert sent == [row_id]


def test_a_row_delivered_twice_at_once_runs_once_and_a_dead_delivery_frees_it(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = rolled_back_with_messages_lost(runtime, clock)
    with runtime.sessions() as session:
        row = session.query(Outbox).filter_by(rollout_id=rollout_id, kind="runbook").one()
        # The first delivery claimed it and was SIGKILLed mid-run.
        assert repository.claim_outbox(session, row.id, clock.now, outbox.CLAIMS["runbook"])
    assert outbox.run_outbox_row(runtime, row.id) == (
        f"outbox {row.id}: another delivery is running it"
    )
    clock.now += outbox.REDISPATCH_AFTER + timedelta(seconds=1)
    assert row.id not in outbox.dispatch_due(runtime)  # still claimed: not sent again
    clock.now += outbox.CLAIMS["runbook"]
    assert row.id in outbox.dispatch_due(runtime)
    assert outbox.run_outbox_row(runtime, row.id).startswith("runbook: 5 step(s)")
    _, events = state(runtime, rollout_id)
    assert len([e for e in events if e.kind == "runbook" and e.data["step"] == 5]) == 1


def after_first_check(runtime):  # type: ignore[no-untyped-def]
    """A rollout started and checked once: its id, its row, when its next check is due."""
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    rollout, _ = state(runtime, rollout_id)
    return rollout_id, rollout, rollout.next_check_at


def test_a_check_due_before_the_next_tick_is_queued_for_its_due_time(world) -> None:
    """With a lookahead of one reconcile interval, reconcile hands out a check due
    within it together with its due time (it is sent to start then), and not one
    due later; an advance that starts a moment early by its host's clock still
    claims it."""
    runtime, _, _, clock, _ = world
    rollout_id, rollout, due = after_first_check(runtime)
    ahead = timedelta(seconds=2)
    with runtime.sessions() as session:
        early = due - timedelta(seconds=3)
        assert repository.take_due_advances(session, early, LOST, lookahead=ahead) == []
        tick = due - timedelta(seconds=1)
        taken = repository.take_due_advances(session, tick, LOST, lookahead=ahead)
        assert [(d.rollout_id, d.due, d.service, d.step_index) for d in taken] == [
            (rollout_id, due, rollout.service, rollout.step_index)
        ]
    clock.now = due - timedelta(milliseconds=200)  # this host's clock, a little behind
    assert advance(runtime, rollout_id).acted
    rollout, _ = state(runtime, rollout_id)
    assert rollout.next_check_at == due + timedelta(seconds=5)  # the plan's clock kept


def test_a_check_queued_further_ahead_than_the_redispatch_delay_is_not_queued_twice(
    world,
) -> None:
    """With a long reconcile interval the lookahead passes the redispatch delay: a
    check queued that far ahead is presumed lost only once the delay has passed
    after its due time, not while it waits for it."""
    runtime, _, _, _, _ = world
    rollout_id, _, due = after_first_check(runtime)
    ahead = timedelta(seconds=30)
    with runtime.sessions() as session:
        queued_at = due - ahead
        taken = repository.take_due_advances(session, queued_at, LOST, lookahead=ahead)
        assert [d.rollout_id for d in taken] == [rollout_id]
        later = queued_at + LOST + timedelta(seconds=5)  # 25 s after, still before due
        assert repository.take_due_advances(session, later, LOST, lookahead=ahead) == []
        at_due = due + LOST - timedelta(seconds=1)  # its message may still start
        assert repository.take_due_advances(session, at_due, LOST, lookahead=ahead) == []
        lost = due + LOST + timedelta(seconds=1)
        taken = repository.take_due_advances(session, lost, LOST, lookahead=ahead)
        assert [d.rollout_id for d in taken] == [rollout_id]


def test_a_holding_check_gives_its_lease_back_and_the_next_worker_takes_the_next_check(
    world,
) -> None:
    """The lease goes back in the holding check's own commit: nothing of it is left
    for another worker to wait out, and a worker of another owner claims the next."""
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    result = advance(runtime, rollout_id)
    assert result.acted and "holding" in result.summary, result.summary
    rollout, _ = state(runtime, rollout_id)
    assert rollout.lease_owner is None and rollout.lease_expires_at is None
    clock.now = rollout.next_check_at
    other = replace(runtime, owner="another-worker")
    assert advance(other, rollout_id).acted
    rollout, _ = state(runtime, rollout_id)
    assert rollout.lease_owner is None


def test_rows_past_what_one_tick_takes_are_not_marked_and_go_at_the_next_tick(world) -> None:
    """A fleet-wide rollback promises more rows than one tick takes (200): the tick
    marks dispatched only the rows it sends, so the rest go 2 s later, not 60 s."""
    runtime, _, _, clock, _ = world
    sent: list[int] = []
    runtime.send_outbox = lambda row_id, kind, rollout_id: sent.append(row_id)
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        rows = [
            outbox.promise_notification(session, rollout_id, "started", clock.now)
            for _ in range(250)
        ]
        session.commit()
    clock.now += timedelta(seconds=6)  # their writers never sent them
    assert outbox.dispatch_due(runtime) == rows[:200] and sent == rows[:200]
    with runtime.sessions() as session:
        untouched = [repository.get_outbox(session, row_id) for row_id in rows[200:]]
        assert all(row.dispatched_at is None and row.attempts == 0 for row in untouched)
    clock.now += timedelta(seconds=2)  # the next tick
    assert outbox.dispatch_due(runtime) == rows[200:]
    assert sent == rows  # each once


def test_a_row_the_broker_refuses_is_sent_at_the_next_tick_and_the_rest_at_once(world) -> None:
    runtime, _, _, clock, _ = world
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        rows = [
            outbox.promise_notification(session, rollout_id, "started", clock.now) for _ in range(3)
        ]
        session.commit()
    sent: list[int] = []

    def blip_on_first(row_id: int, kind: str, rollout_id: str) -> None:
        if row_id == rows[0]:
            raise ConnectionError("broker unreachable")
        sent.append(row_id)

    clock.now += timedelta(seconds=6)
    assert outbox.dispatch_due(runtime, blip_on_first) == rows[1:]
    clock.now += timedelta(seconds=2)
    assert outbox.dispatch_due(runtime, blip_on_first) == []  # refused again, and again due
    clock.now += timedelta(seconds=2)
    assert outbox.dispatch_due(runtime, lambda *row: sent.append(row[0])) == rows[:1]
    assert sent == [*rows[1:], rows[0]]
