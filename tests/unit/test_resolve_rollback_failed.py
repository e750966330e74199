"""Ending a rollout stuck in ``rollback_failed`` (``canary resolve``), with a fake
clock and router on a real SQLite store.

A rollback that cannot reach its router retries for ever and blocks the service;
a person who fixed traffic by hand ends it, and the controller reads the router
back before it records anything: the record never claims traffic on stable that
the controller did not read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from rich.console import Console
from sqlalchemy import select

from controller import operations, outbox, slots
from controller.engine import advance
from controller.operations import (
    OperationConflict,
    OperationError,
    OperationOutcome,
    abort_rollout,
    resolve_rollout,
    rollback_rollout,
    start_rollout,
)
from controller.plan import Plan
from controller.render import detail_view
from controller.rollback import rollback
from controller.runtime import RouterFactory, Runtime
from controller.store import repository
from controller.store.models import Outbox
from controller.traffic.base import RouterError
from controller.views import rollout_detail
from tests.unit.test_slots_and_watching import with_traffic
from tests.unit.test_state_machine import (
    FakeRouter,
    make_plan,
    notified,
    start,
    state,
    with_notifications,
)


class BackendGone(FakeRouter):
    """HAProxy without the plan's backend: every command is refused."""

    def set_canary_weight(self, weight: int) -> None:
        raise RouterError("HAProxy refused 'get weight api/canary': No such backend.")

    def get_canary_weight(self) -> int:
        raise RouterError("HAProxy refused 'get weight api/canary': No such backend.")


def failed_rollback(
    runtime: Runtime,
    router: FakeRouter,
    plan: Plan | None = None,
    ask: Callable[..., OperationOutcome] = rollback_rollout,
) -> str:
    """A rollout whose canary took 10 % and whose rollback could not shift it back."""
    rollout_id = start(runtime, plan or make_plan())
    advance(runtime, rollout_id)
    assert router.weight == 10
    with runtime.sessions() as session:
        ask(session, rollout_id, reason="p99 doubled", actor="alice", now=runtime.clock())
    router.fail_sets = 1000
    assert rollback(runtime, rollout_id).state == "rollback_failed"
    router.fail_sets = 0
    return rollout_id


def resolve(
    runtime: Runtime,
    rollout_id: str,
    router_for: RouterFactory | None = None,
    force: bool = False,
    actor: str = "bob",
) -> OperationOutcome:
    with runtime.sessions() as session:
        return resolve_rollout(
            session,
            rollout_id,
            reason="canary drained by hand in HAProxy",
            actor=actor,
            now=runtime.clock(),
            router_for=router_for or runtime.router_for,
            force=force,
        )


def outbox_rows(runtime: Runtime, rollout_id: str) -> list[tuple[str, dict]]:
    with runtime.sessions() as session:
        rows = session.scalars(
            select(Outbox).where(Outbox.rollout_id == rollout_id).order_by(Outbox.id)
        ).all()
        return [(row.kind, dict(row.payload)) for row in rows]


@pytest.mark.parametrize(
    ("ask", "final"), [(rollback_rollout, "rolled_back"), (abort_rollout, "aborted")]
)
def test_traffic_fixed_by_hand_and_read_back_ends_the_rollout_as_its_rollback_would(
    world, ask: Callable[..., OperationOutcome], final: str
) -> None:
    runtime, _, router, clock, _ = world
    sent = notified(runtime)
    rollout_id = failed_rollback(runtime, router, with_notifications(make_plan()), ask)
    assert sent[-1:] == ["rollback_failed"]
    sent.clear()
    before = outbox_rows(runtime, rollout_id)
    router.weight = 0  # the person put the canary at 0 by hand
    clock.now += timedelta(minutes=3)

    outcome = resolve(runtime, rollout_id)

    assert outcome.accepted, outcome.message
    assert outcome.message == f"rollout {rollout_id} {final}: the router reads canary weight 0%"
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == final and rollout.weight == 0 and rollout.finished_at == clock()
    assert rollout.lease_owner is None
    assert rollout.reason.endswith("; resolved by bob: canary drained by hand in HAProxy")
    resolved = events[-1]
    assert resolved.kind == "resolved" and resolved.actor == "bob"
    assert resolved.message == (
        f"resolved by bob: the router reads canary weight 0%; rollout {final}: "
        "canary drained by hand in HAProxy"
    )
    assert resolved.data["traffic_confirmed"] and not resolved.data["forced"]
    assert resolved.data["router"]["weight"] == 0
    assert resolved.data["reason"] == "canary drained by hand in HAProxy"
    # As a rollback that settles: the runbook (steps 2-5) and the notification.
    promised = outbox_rows(runtime, rollout_id)[len(before) :]
    assert [kind for kind, _ in promised] == ["runbook", "notify"]
    assert promised[0][1]["traffic_on_stable"] is True
    assert promised[1][1] == {"kind": "rolled_back"}
    clock.now += timedelta(seconds=6)  # past the grace reconcile leaves the writer
    outbox.dispatch_due(runtime)
    _, events = state(runtime, rollout_id)
    steps = [e.data["step"] for e in events if e.kind == "runbook" and e.id > resolved.id]
    assert steps == [1, 2, 3, 4, 5] and sent == ["rolled_back"]
    # The service can ship again, and a retry of the old rollback finds nothing to do.
    assert rollback(runtime, rollout_id).summary == "nothing to roll back"
    assert start(runtime, make_plan(), version="2.1")


def test_a_router_that_reads_canary_traffic_is_refused_with_what_it_read(world) -> None:
    runtime, _, router, _, _ = world
    rollout_id = failed_rollback(runtime, router)
    before, _ = state(runtime, rollout_id)
    outcome = resolve(runtime, rollout_id)
    assert not outcome.accepted
    assert outcome.message.startswith(
        "traffic is not confirmed on stable: the router gives 10% to the canary slot canary. "
        "Nothing was changed"
    )
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rollback_failed" and rollout.version == before.version
    assert [e for e in events if e.kind == "resolved"] == []


def test_an_unreadable_router_is_refused_and_only_an_explicit_force_ends_it_unconfirmed(
    world,
) -> None:
    runtime, _, router, _, _ = world
    rollout_id = failed_rollback(runtime, router)
    gone = BackendGone()
    before = outbox_rows(runtime, rollout_id)

    refused = resolve(runtime, rollout_id, lambda plan, values: gone)
    assert not refused.accepted and "cannot read the router: " in refused.message
    assert "No such backend" in refused.message
    assert state(runtime, rollout_id)[0].state == "rollback_failed"

    forced = resolve(runtime, rollout_id, lambda plan, values: gone, force=True, actor="root")
    assert forced.accepted
    assert "aborted, recorded with traffic NOT confirmed on stable" in forced.message
    rollout, events = state(runtime, rollout_id)
    # Never "rolled back", never a weight the router did not show.
    assert rollout.state == "aborted" and rollout.weight is None
    assert "ended by root with traffic NOT confirmed on stable" in rollout.reason
    resolved = events[-1]
    assert resolved.kind == "resolved" and resolved.actor == "root"
    assert resolved.message.startswith(
        "ended by root (forced) with traffic NOT confirmed on stable by the controller: "
        "cannot read the router: HAProxy refused"
    )
    assert resolved.message.endswith("; rollout aborted: canary drained by hand in HAProxy")
    assert resolved.data["forced"] and not resolved.data["traffic_confirmed"]
    assert "No such backend" in resolved.data["router"]["error"]
    assert not any(e.kind == "weight_set" and e.data.get("rollback") for e in events)
    # The failed attempt promised the critical incident already: nothing more.
    assert outbox_rows(runtime, rollout_id) == before
    assert not rollback(runtime, rollout_id).acted
    # No active rollout holds the service now; a start still reads the router itself.
    with pytest.raises(OperationConflict, match="^router: the router gives 10% to canary"):
        start(runtime, make_plan(), version="2.1")
    router.weight = 0
    assert start(runtime, make_plan(), version="2.1")


def test_a_forced_end_promises_the_incident_if_the_failed_attempt_never_did(world) -> None:
    runtime, _, router, _, _ = world
    rollout_id = failed_rollback(runtime, router, with_notifications(make_plan()))
    with runtime.sessions() as session:  # a rollout from before runbooks were promised
        for row in session.scalars(select(Outbox).where(Outbox.rollout_id == rollout_id)):
            session.delete(row)
        session.commit()
    assert resolve(runtime, rollout_id, lambda p, v: BackendGone(), force=True).accepted
    promised = outbox_rows(runtime, rollout_id)
    assert [kind for kind, _ in promised] == ["runbook", "notify"]
    assert promised[0][1]["traffic_on_stable"] is False
    assert promised[0][1]["shift_detail"].startswith("not confirmed: cannot read the router")
    assert promised[1][1] == {"kind": "rollback_failed"}


def test_the_stable_slot_must_answer_the_stable_version(world, monkeypatch) -> None:
    runtime, _, router, _, _ = world
    serving = {"blue": "2.0"}  # the stable slot was redeployed with the canary's version
    monkeypatch.setattr(
        slots,
        "served_version",
        lambda url, check: serving["blue"] if "blue" in url else "2.0",
    )
    urls = 'slot_urls: {blue: "http://blue", green: "http://green"}'
    plan = with_traffic(f"{urls}\nversion_check: {{path: /version}}")
    rollout_id = start(runtime, plan)
    serving["blue"] = "1.0"
    advance(runtime, rollout_id)
    with runtime.sessions() as session:
        rollback_rollout(session, rollout_id, reason="p99", actor="alice", now=runtime.clock())
    router.fail_sets = 1000
    rollback(runtime, rollout_id)
    router.fail_sets, router.weight = 0, 0
    serving["blue"] = "2.0"

    refused = resolve(runtime, rollout_id)
    assert not refused.accepted
    assert (
        "the router reads canary weight 0%, but stable slot blue serves 2.0, expected 1.0"
        in refused.message
    )
    serving["blue"] = "1.0"
    outcome = resolve(runtime, rollout_id)
    assert outcome.accepted, outcome.message
    assert outcome.message.endswith(
        "the router reads canary weight 0%, stable slot blue serves 1.0"
    )
    _, events = state(runtime, rollout_id)
    assert events[-1].data["router"]["stable_checked"] == "stable slot blue serves 1.0"


def test_resolve_refuses_other_states_missing_rollouts_and_no_reason(world) -> None:
    runtime, _, router, _, _ = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    refused = resolve(runtime, rollout_id)
    assert not refused.accepted
    assert refused.message == (
        f"rollout {rollout_id} is running, not rollback_failed: resolve ends only a "
        "rollback that cannot confirm traffic on stable (use abort or rollback)"
    )
    with pytest.raises(OperationError, match="^id: no rollout 'r-nope'"):
        resolve(runtime, "r-nope")
    with runtime.sessions() as session, pytest.raises(OperationError, match="^reason: "):
        resolve_rollout(
            session,
            rollout_id,
            reason="  ",
            actor="bob",
            now=runtime.clock(),
            router_for=runtime.router_for,
        )
    assert state(runtime, rollout_id)[0].state == "running" and router.weight == 10


def test_a_rollback_attempt_holding_the_lease_is_not_overwritten(world, monkeypatch) -> None:
    runtime, _, router, clock, _ = world
    monkeypatch.setattr(operations, "RESOLVE_LEASE_WAIT_SECONDS", 0.1)
    rollout_id = failed_rollback(runtime, router)
    router.weight = 0
    with runtime.sessions() as session:
        held = repository.claim(
            session, rollout_id, "rollback-worker", clock(), runtime.lease, ["rollback_failed"]
        )
        assert held is not None
    refused = resolve(runtime, rollout_id)
    assert not refused.accepted
    assert refused.message.startswith(f"rollback-worker holds rollout {rollout_id} right now")
    rollout, _ = state(runtime, rollout_id)
    assert rollout.state == "rollback_failed" and rollout.lease_owner == "rollback-worker"


def test_a_rollback_retry_in_flight_does_not_overwrite_the_resolution(world) -> None:
    """The person resolves while a retry shifts traffic (it takes the lease only
    after the shift): the retry then finds the rollout ended and writes nothing."""
    runtime, _, router, _, _ = world
    rollout_id = failed_rollback(runtime, router)
    outcomes: list[OperationOutcome] = []

    class ResolvedDuringTheShift(FakeRouter):
        def set_canary_weight(self, weight: int) -> None:
            if not outcomes:
                router.weight = 0  # by hand
                outcomes.append(resolve(runtime, rollout_id, lambda p, v: router))
            super().set_canary_weight(weight)

    during = ResolvedDuringTheShift(weight=0)
    runtime.router_for = lambda plan, values: during
    _, before = state(runtime, rollout_id)
    result = rollback(runtime, rollout_id)

    assert outcomes[0].accepted, outcomes[0].message
    assert not result.acted and result.summary == "ended meanwhile (rolled_back); nothing recorded"
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rolled_back"
    assert [e.kind for e in events[len(before) :]] == ["resolved"]


def test_rollback_failed_says_how_to_end_it_where_people_look(world) -> None:
    runtime, _, router, _, _ = world
    rollout_id = failed_rollback(runtime, router)
    hint = f"fix traffic by hand, then `canary resolve {rollout_id} --reason ...`"
    _, events = state(runtime, rollout_id)
    failure = next(e for e in events if e.kind == "rollback_failed")
    assert failure.message.endswith(f"If the router cannot be fixed for the controller: {hint}")
    with runtime.sessions() as session:
        with pytest.raises(OperationConflict) as refused:
            start_rollout(
                session,
                make_plan(),
                service="api",
                version="2.1",
                stable="1.0",
                created_by="carol",
                now=runtime.clock(),
                router_for=runtime.router_for,
            )
        detail = rollout_detail(session, repository.get_rollout(session, rollout_id))
    assert str(refused.value) == (
        f"service: api already has an active rollout ({rollout_id}); "
        f"{rollout_id} is rollback_failed: {hint}"
    )
    assert detail["action_needed"] == f"{rollout_id} is rollback_failed: {hint}"
    assert f"action needed: {rollout_id} is rollback_failed" in _text(detail_view(detail))


def _text(renderable: object) -> str:
    console = Console(width=300, record=True)
    console.print(renderable)
    return console.export_text()
