"""A reconcile tick hands out each piece of due work on its own (issue 28, case 9).

On a real SQLite store with a fake clock, and fake senders standing in for the
broker: one of them refuses one message, or one rollout's stored plan does not
load, and every other rollback, advance and outbox row still goes out in the same
tick, the failure is logged with its rollout's id, and what was not sent is due
again at the next tick, not after the 30 s rollback hold or the 20 s redispatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import update
from structlog.testing import capture_logs

from controller import outbox, timeouts
from controller.operations import abort_rollout, start_rollout
from controller.reconcile.tick import ROLLBACK_HOLD, Senders, TickReport, reconcile
from controller.runtime import Runtime
from controller.store import heartbeats, repository
from controller.store.models import Rollout
from controller.store.repository import ROLLBACK_FALLBACK, DueAdvance
from controller.stored_plans import plan_of
from tests.unit.test_state_machine import Clock, make_plan

NEXT_TICK = timedelta(seconds=2)


class BrokerBlip(ConnectionError):
    """One message the broker did not take."""


class OutOfTime(Exception):
    """Stands for the task runner's soft time limit."""


@dataclass
class FakeBroker:
    """Records what each sender was given; refuses the messages named in ``refuse``
    (rollout ids, or outbox row ids)."""

    refuse: set[object] = field(default_factory=set)
    rollbacks: list[str] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)
    stages: dict[str, str] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)

    def rollback(self, rollout_id: str) -> None:
        if rollout_id in self.refuse:
            raise BrokerBlip("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.rollbacks.append(rollout_id)

    def advances(self, batch: Sequence[DueAdvance], labels: Mapping[str, tuple[str, str]]) -> None:
        ids = [due.rollout_id for due in batch]
        if self.refuse & set(ids):
            raise BrokerBlip("Connection reset by peer")
        self.batches.append(ids)
        self.stages |= {rollout_id: labels[rollout_id][1] for rollout_id in ids}

    def outbox(self, row_id: int, kind: str, rollout_id: str) -> None:
        if row_id in self.refuse:
            raise BrokerBlip("Connection reset by peer")
        self.rows.append(row_id)

    @property
    def advanced(self) -> set[str]:
        return {rollout_id for batch in self.batches for rollout_id in batch}


def senders(runtime: Runtime, broker: FakeBroker) -> Senders:
    """The broker's fakes, and stage labels read from each rollout's stored plan as
    the workers read them (a plan that does not load raises here as it does there)."""

    def stage_label(rollout_id: str, step_index: int) -> str:
        with runtime.sessions() as session:
            steps = plan_of(repository.get_rollout(session, rollout_id)).steps()
        return steps[min(step_index, len(steps) - 1)].label

    return Senders(broker.rollback, broker.advances, broker.outbox, stage_label)


def tick(runtime: Runtime, broker: FakeBroker, batch_size: int = 20) -> TickReport:
    return reconcile(
        runtime, senders(runtime, broker), lookahead=timedelta(0), batch_size=batch_size
    )


def started(runtime: Runtime, services: int) -> list[str]:
    """One pending rollout (due now) per service."""
    ids = []
    with runtime.sessions() as session:
        for n in range(services):
            ids.append(
                start_rollout(
                    session,
                    make_plan(),
                    service=f"svc-{n}",
                    version="2.0",
                    stable="1.0",
                    created_by="tester",
                    now=runtime.clock(),
                    router_for=runtime.router_for,
                ).id
            )
    return ids


def rolling_back(runtime: Runtime, clock: Clock, services: int) -> list[str]:
    """One rollout per service, each aborted while its own enqueue was lost: a
    rollback due now (after the fallback delay) for each."""
    ids = started(runtime, services)
    with runtime.sessions() as session:
        for rollout_id in ids:
            abort_rollout(session, rollout_id, reason="bad build", actor="sre", now=clock.now)
    clock.now += ROLLBACK_FALLBACK
    return ids


def failures(logs: list[dict[str, object]], event: str) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == event]


def test_a_rollback_the_broker_refuses_costs_the_others_nothing_and_goes_next_tick(
    world,
) -> None:
    runtime, _, _, clock, _ = world
    first, refused, third = rolling_back(runtime, clock, 3)
    broker = FakeBroker(refuse={refused})

    with capture_logs() as logs:
        report = tick(runtime, broker)

    assert sorted(broker.rollbacks) == sorted([first, third])
    assert report.rollbacks == 2 and report.failed == (f"rollback {refused}",)
    [logged] = failures(logs, "rollback_enqueue_failed")
    assert logged["rollout_id"] == refused and "Connection refused" in str(logged["error"])

    # The broker is back at the next tick: the refused rollback goes then, not after
    # the hold meant for a rollback whose message reached the broker.
    broker.refuse.clear()
    clock.now += NEXT_TICK
    assert NEXT_TICK < ROLLBACK_HOLD
    tick(runtime, broker)
    assert broker.rollbacks[2:] == [refused]
    # The two sent are still held: not sent twice.
    assert sorted(broker.rollbacks) == sorted([first, refused, third])


def test_a_rollout_whose_plan_does_not_load_keeps_no_other_check_waiting(world) -> None:
    runtime, _, _, _, _ = world
    broken, *others = started(runtime, 3)
    with runtime.sessions() as session:
        session.execute(update(Rollout).where(Rollout.id == broken).values(plan={"name": 7}))
        session.commit()
    broker = FakeBroker()

    with capture_logs() as logs:
        report = tick(runtime, broker)

    # Every due rollout's check goes out, the broken one's too: its advance is what
    # records what is wrong with it; only its label for Flower is blank.
    assert broker.advanced == {broken, *others} and report.failed == ()
    assert broker.stages[broken] == "" and all(broker.stages[o] for o in others)
    [logged] = failures(logs, "stage_label_failed")
    assert logged["rollout_id"] == broken


def test_an_advance_batch_the_broker_refuses_is_taken_again_at_the_next_tick(world) -> None:
    runtime, _, _, clock, _ = world
    ids = started(runtime, 3)
    refused = ids[1]
    broker = FakeBroker(refuse={refused})

    with capture_logs() as logs:
        report = tick(runtime, broker, batch_size=1)

    assert broker.advanced == set(ids) - {refused}
    assert report.advances == 2 and report.batches == 2
    assert report.failed == (f"advance {refused}",)
    [logged] = failures(logs, "advance_enqueue_failed")
    assert logged["rollout_id"] == refused

    broker.refuse.clear()
    clock.now += NEXT_TICK
    tick(runtime, broker, batch_size=1)
    assert broker.batches[2:] == [[refused]]  # the others stay queued once


def test_an_outbox_row_the_broker_refuses_costs_the_others_nothing(world) -> None:
    runtime, _, _, clock, _ = world
    [rollout_id] = started(runtime, 1)
    with runtime.sessions() as session:
        rows = [
            outbox.promise_notification(session, rollout_id, "started", clock.now) for _ in range(3)
        ]
        session.commit()
    clock.now += timedelta(seconds=6)  # their writer never sent them
    broker = FakeBroker(refuse={rows[0]})

    with capture_logs() as logs:
        report = tick(runtime, broker)

    assert broker.rows == rows[1:] and report.outbox_rows == 2
    [logged] = failures(logs, "outbox_send_failed")
    assert logged["outbox_id"] == rows[0] and logged["rollout_id"] == rollout_id

    broker.refuse.clear()
    clock.now += NEXT_TICK
    tick(runtime, broker)
    assert broker.rows == [*rows[1:], rows[0]]  # the refused one at the next tick, once


def test_out_of_time_stops_the_tick_and_leaves_nothing_held(world) -> None:
    """The task's time limit is not a failed send: it stops the tick. The rollbacks
    taken but not sent are due at the next tick all the same."""
    timeouts.register(OutOfTime)
    runtime, _, _, clock, _ = world
    ids = rolling_back(runtime, clock, 3)
    broker = FakeBroker()
    calls: list[str] = []

    def strikes(rollout_id: str) -> None:
        calls.append(rollout_id)
        if len(calls) == 2:
            raise OutOfTime()
        broker.rollback(rollout_id)

    with pytest.raises(OutOfTime):
        reconcile(
            runtime,
            Senders(strikes, broker.advances, broker.outbox, lambda *_: ""),
            lookahead=timedelta(0),
            batch_size=20,
        )
    [sent] = broker.rollbacks
    clock.now += NEXT_TICK
    tick(runtime, broker)
    assert sorted(broker.rollbacks[1:]) == sorted(set(ids) - {sent})


def test_every_tick_records_that_reconcile_ran(world) -> None:
    runtime, _, _, clock, _ = world
    with runtime.sessions() as session:
        assert heartbeats.last_run(session) is None
    tick(runtime, FakeBroker())
    clock.now += NEXT_TICK
    tick(runtime, FakeBroker())
    with runtime.sessions() as session:
        beat = heartbeats.last_run(session)
        assert beat is not None and (beat.at, beat.by) == (clock.now, runtime.owner)
