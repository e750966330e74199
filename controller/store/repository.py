"""Queries and conditional updates on the store: the only way state changes.

The lease is what keeps one actor per rollout: a conditional UPDATE that succeeds
for exactly one caller while the lease is free or expired.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, DateTime, and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from controller.redaction import redact
from controller.store import event_log, totals
from controller.store.models import (
    ACTIVE_STATES,
    ADVANCING_STATES,
    ROLLBACK_STATES,
    Event,
    Outbox,
    Release,
    Rollout,
    RolloutState,
)

ROLLBACK_FALLBACK = timedelta(seconds=5)


def new_rollout_id() -> str:
    return "r-" + secrets.token_hex(5)


def create_rollout(
    session: Session,
    *,
    service: str,
    canary_version: str,
    stable_version: str,
    plan_name: str,
    plan: dict[str, Any],
    created_by: str,
    now: datetime,
    variables: dict[str, str] | None = None,
    stable_slot: str | None = None,
    canary_slot: str | None = None,
    plan_origin: str | None = None,
) -> Rollout:
    rollout = Rollout(
        stable_slot=stable_slot,
        canary_slot=canary_slot,
        id=new_rollout_id(),
        service=service,
        canary_version=canary_version,
        stable_version=stable_version,
        plan_name=plan_name,
        plan=plan,
        state=RolloutState.PENDING,
        step_index=0,
        next_check_at=now,
        analysis={},
        variables=variables or {},
        created_by=created_by,
        created_at=now,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    append_event(
        session,
        rollout.id,
        "created",
        actor=created_by,
        at=now,
        message=f"rollout of {service} {canary_version} (stable {stable_version}) "
        f"with plan {plan_name} created" + (f" ({plan_origin})" if plan_origin else ""),
        data={
            "service": service,
            "canary_version": canary_version,
            "stable_version": stable_version,
            "plan": plan_name,
            "plan_origin": plan_origin,
        },
    )
    return rollout


def append_event(
    session: Session,
    rollout_id: str,
    kind: str,
    *,
    actor: str,
    at: datetime,
    message: str,
    data: dict[str, Any] | None = None,
    step_index: int | None = None,
) -> None:
    """Record one event, inserted with the transaction's commit (``event_log``).
    Events are shown by the API and the CLI and copied into incidents, and their
    text often quotes plan URLs and command output, so the message and the data are
    stored with every secret masked."""
    masked = redact(data or {})
    event_log.append(
        session,
        {
            "rollout_id": rollout_id,
            "kind": kind,
            "actor": actor,
            "at": at,
            "message": redact(message),
            "data": masked,
            "step_index": step_index,
        },
    )
    if kind == "measurement":
        totals.count_measurement(session, masked)


def database_now(session: Session, fallback: datetime) -> datetime:
    """The clock leases are measured by: the database server's on PostgreSQL, so that
    workers on hosts whose clocks disagree still agree on when a lease expires. A
    SQLite store lives on one host, whose clock is ``fallback``."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        value = session.scalar(text("SELECT clock_timestamp()"))
        if isinstance(value, datetime):
            return value.astimezone(UTC)
    return fallback


def database_clock(session: Session, fallback: datetime) -> datetime | ColumnElement[datetime]:
    """``database_now`` as an expression evaluated inside the statement that uses it,
    saving the round trip that asks the clock first."""
    if session.get_bind().dialect.name == "postgresql":
        return func.clock_timestamp(type_=DateTime(timezone=True))
    return fallback


def _lease_free(
    lease_now: datetime | ColumnElement[datetime], owner: str | None = None
) -> ColumnElement[bool]:
    """Nobody holds the lease, it expired (by the database's clock), or it is ours."""
    held_by = [Rollout.lease_owner == owner] if owner else []
    return or_(Rollout.lease_owner.is_(None), Rollout.lease_expires_at < lease_now, *held_by)


def claim(
    session: Session,
    rollout_id: str,
    owner: str,
    now: datetime,
    lease: timedelta,
    states: Iterable[str],
    due_only: bool = False,
) -> Rollout | None:
    """Take the rollout's lease if it is free (or ours, or expired); None if someone has it.

    The UPDATE's WHERE clause is the whole lock: two workers racing for one rollout
    cannot both see a row count of one. Taking the lease also clears ``dispatched_at``:
    the advance that was queued is the one running now.
    """
    lease_now = database_clock(session, now)
    conditions = [
        Rollout.id == rollout_id,
        Rollout.state.in_([str(s) for s in states]),
        _lease_free(lease_now, owner),
    ]
    if due_only:
        # An advance queued to start at its due time may find this host's clock a
        # little behind the one that queued it: that is still the due check.
        conditions.append(Rollout.next_check_at <= now + EARLY_START_TOLERANCE)
    # One round trip takes the lease and reads the row it took (RETURNING).
    rollout = session.scalars(
        update(Rollout)
        .where(*conditions)
        .values(
            lease_owner=owner,
            lease_expires_at=lease_now + lease,
            dispatched_at=None,
            version=Rollout.version + 1,
        )
        .returning(Rollout)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).one_or_none()
    session.commit()
    return rollout


def release(session: Session, rollout_id: str, owner: str) -> None:
    """Give the lease back; only its owner can."""
    session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def rollback_request(
    rollout: Rollout,
    *,
    reason: str,
    actor: str,
    now: datetime,
    final_state: RolloutState = RolloutState.ROLLED_BACK,
    tripped: str | None = None,
    trigger: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns a rollback request sets on ``rollout``: one definition for the
    conditional UPDATE of ``request_rollback`` and for an advance that decides a
    rollback and requests it in the same commit as the decision."""
    values: dict[str, Any] = {
        "state": RolloutState.ROLLING_BACK,
        "reason": reason,
        "updated_at": now,
        # Whoever requests a rollback enqueues it at once; reconcile is the fallback.
        "next_check_at": now + ROLLBACK_FALLBACK,
        "analysis": {
            **(rollout.analysis or {}),
            "final_state": str(final_state),
            "trigger": {
                "at": now.isoformat(),
                "actor": actor,
                "reason": reason,
                **(trigger or {"kind": "manual"}),
            },
        },
    }
    if tripped:
        values["tripped_criterion"] = tripped
    return values


def append_rollback_requested(
    session: Session,
    rollout_id: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
    tripped: str | None,
) -> None:
    append_event(
        session,
        rollout_id,
        "rollback_requested",
        actor=actor,
        at=now,
        message=f"rollback requested: {reason}",
        data={"reason": reason, "tripped": tripped},
    )


def request_rollback(
    session: Session,
    rollout_id: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
    final_state: RolloutState = RolloutState.ROLLED_BACK,
    tripped: str | None = None,
    trigger: dict[str, Any] | None = None,
) -> bool:
    """Mark an active rollout for rollback, whoever holds its lease; False if not active.

    Rollback beats everything: this does not wait for the lease. An advance that
    holds it will fail its own commit on the version check, and the rollback waits
    for its lease before it declares traffic settled. Whatever the caller added to
    the session (a decision event) is committed with the request, or not at all.
    """
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or rollout.state not in [*ADVANCING_STATES, RolloutState.PAUSED]:
        return False
    values = rollback_request(
        rollout,
        reason=reason,
        actor=actor,
        now=now,
        final_state=final_state,
        tripped=tripped,
        trigger=trigger,
    )
    result = session.execute(
        update(Rollout)
        .where(
            Rollout.id == rollout_id, Rollout.state.in_([*ADVANCING_STATES, RolloutState.PAUSED])
        )
        .values(**values, version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    append_rollback_requested(
        session, rollout_id, reason=reason, actor=actor, now=now, tripped=tripped
    )
    session.commit()
    return True


def mark_stable(
    session: Session,
    service: str,
    version: str,
    rollout_id: str | None,
    now: datetime,
    stable_slot: str | None = None,
) -> None:
    """Record ``version`` as the service's stable release, served by ``stable_slot``
    (insert or replace)."""
    release = session.get(Release, service)
    if release is None:
        session.add(
            Release(
                service=service,
                stable_version=version,
                rollout_id=rollout_id,
                marked_at=now,
                stable_slot=stable_slot,
            )
        )
    else:
        release.stable_version, release.rollout_id, release.marked_at = version, rollout_id, now
        release.stable_slot = stable_slot


def require_reconciliation(session: Session, rollout: Rollout, reason: str, now: datetime) -> None:
    """Record, in the caller's transaction, that ``rollout``'s service needs its data
    reconciled before the next rollout (a service with no release yet gets one for its
    stable version)."""
    release = session.get(Release, rollout.service)
    if release is None:
        release = Release(
            service=rollout.service, stable_version=rollout.stable_version, marked_at=now
        )
        session.add(release)
    release.reconcile_required_by = rollout.id
    release.reconcile_required_reason = reason
    release.reconcile_required_at = now


def reconciliation_pending(session: Session, service: str) -> Release | None:
    """The service's release row if a reconciliation is still to be recorded."""
    release = session.get(Release, service)
    return release if release is not None and release.reconcile_required_by else None


def stable_release(session: Session, service: str) -> Release | None:
    return session.get(Release, service)


# Advancing rollouts, and paused ones whose canary carries traffic (still measured).
_WATCHED = or_(
    Rollout.state.in_([str(s) for s in ADVANCING_STATES]),
    and_(Rollout.state == RolloutState.PAUSED, Rollout.weight > 0),
)
_ROLLING_BACK = Rollout.state.in_([str(s) for s in ROLLBACK_STATES])


def _due(session: Session, which: ColumnElement[bool], now: datetime, limit: int) -> Sequence[str]:
    """Rollouts of ``which`` kind whose next check is due and whose lease is free."""
    return session.scalars(
        select(Rollout.id)
        .where(which, Rollout.next_check_at <= now, _lease_free(database_now(session, now)))
        .order_by(Rollout.next_check_at)
        .limit(limit)
    ).all()


def due_for_advance(session: Session, now: datetime, limit: int = 500) -> Sequence[str]:
    """Rollouts to advance (or watch) now, queued or not."""
    return _due(session, _WATCHED, now, limit)


def due_for_rollback(session: Session, now: datetime, limit: int = 500) -> Sequence[str]:
    """Rollbacks not yet finished (or failed and due for another try) with a free lease."""
    return _due(session, _ROLLING_BACK, now, limit)


# How early (by this host's clock) an advance queued for its due time may start.
EARLY_START_TOLERANCE = timedelta(milliseconds=500)


class DueAdvance(NamedTuple):
    """A rollout handed out for its next check."""

    rollout_id: str
    due: datetime
    service: str
    step_index: int


def take_due_advances(
    session: Session,
    now: datetime,
    redispatch_after: timedelta,
    limit: int = 500,
    lookahead: timedelta = timedelta(0),
) -> list[DueAdvance]:
    """Rollouts due by ``now + lookahead`` and not already queued, with their due
    times (and what a task's arguments name), each marked ``dispatched_at`` as it is
    taken.

    A queued advance is queued once: the next ticks skip it until an advance claims
    the rollout (which clears the mark) or ``redispatch_after`` has passed since both
    its dispatch and its due time, when the message is presumed lost (a broker
    restart; the message expires then) and it is queued again. With a lookahead of
    a reconcile interval or two, a check due before the next tick is queued now to
    start at its due time, instead of up to a tick late; counting from its due
    time too, a check queued further ahead than ``redispatch_after`` (a long
    reconcile interval) is not queued again before it is even due.
    """
    stale = now - redispatch_after
    presumed_lost = and_(Rollout.dispatched_at < stale, Rollout.next_check_at < stale)
    not_queued = or_(Rollout.dispatched_at.is_(None), presumed_lost)
    candidates = [
        rollout_id
        for rollout_id in _due(session, and_(_WATCHED, not_queued), now + lookahead, limit)
    ]
    if not candidates:
        session.commit()
        return []
    taken = session.execute(
        update(Rollout)
        .where(
            Rollout.id.in_(candidates),
            not_queued,
            _lease_free(database_now(session, now)),
        )
        .values(dispatched_at=now)
        .returning(Rollout.id, Rollout.next_check_at, Rollout.service, Rollout.step_index)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return [DueAdvance(*row) for row in taken]


def record_router_weight(
    session: Session, rollout_id: str, owner: str, weight: int, now: datetime, why: str
) -> None:
    """Record the weight the router really carries, under our lease, whatever the
    version: after a step lost its commit to a concurrent change, the record must not
    claim a weight the router does not show."""
    result = session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.lease_owner == owner)
        .values(weight=weight, updated_at=now, version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        append_event(
            session,
            rollout_id,
            "weight_recorded",
            actor="controller",
            at=now,
            message=f"router carries {weight}% for the canary: {why}",
            data={"weight": weight, "why": why},
        )
    session.commit()


def take_due_rollbacks(session: Session, now: datetime, hold: timedelta) -> list[str]:
    """Due rollbacks, each pushed ``hold`` into the future as it is taken, so that
    concurrent reconciles (and the next ticks) do not dispatch it again meanwhile."""
    taken = []
    for rollout_id in _due(session, _ROLLING_BACK, now, 500):
        result = session.execute(
            update(Rollout)
            .where(
                Rollout.id == rollout_id,
                Rollout.next_check_at <= now,
                Rollout.state.in_([str(s) for s in ROLLBACK_STATES]),
            )
            .values(next_check_at=now + hold, version=Rollout.version + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            taken.append(rollout_id)
    session.commit()
    return taken


def release_rollback_holds(
    session: Session, rollout_ids: Iterable[str], held_until: datetime, due_at: datetime
) -> None:
    """Make rollbacks taken by ``take_due_rollbacks`` (held until ``held_until``) due
    at ``due_at`` again: their message never reached the broker, and a rollback must
    not sit out the hold meant for one that did. A rollback whose row moved on since
    (its worker set its own next try) is left alone."""
    ids = list(rollout_ids)
    if not ids:
        return
    session.execute(
        update(Rollout)
        .where(
            Rollout.id.in_(ids),
            Rollout.next_check_at == held_until,
            _ROLLING_BACK,
        )
        .values(next_check_at=due_at, version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def unmark_advances_dispatched(
    session: Session, rollout_ids: Iterable[str], marked_at: datetime
) -> None:
    """Undo the dispatch mark ``take_due_advances`` set at ``marked_at`` on rollouts
    whose advance could not be queued, so the next tick takes them instead of the
    one after the redispatch delay. A mark set since (a newer tick) or cleared by an
    advance that claimed the rollout is left alone."""
    ids = list(rollout_ids)
    if not ids:
        return
    session.execute(
        update(Rollout)
        .where(Rollout.id.in_(ids), Rollout.dispatched_at == marked_at)
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def get_rollout(session: Session, rollout_id: str) -> Rollout | None:
    return session.get(Rollout, rollout_id)


def list_rollouts(
    session: Session, *, active_only: bool = False, service: str | None = None, limit: int = 50
) -> Sequence[Rollout]:
    query = select(Rollout).order_by(Rollout.created_at.desc()).limit(limit)
    if active_only:
        query = query.where(Rollout.state.in_([str(s) for s in ACTIVE_STATES]))
    if service:
        query = query.where(Rollout.service == service)
    return session.scalars(query).all()


def events_for(
    session: Session, rollout_id: str, kinds: Iterable[str] | None = None
) -> Sequence[Event]:
    event_log.insert_pending(session)
    query = select(Event).where(Event.rollout_id == rollout_id).order_by(Event.id)
    if kinds is not None:
        query = query.where(Event.kind.in_(list(kinds)))
    return session.scalars(query).all()


def events_after(session: Session, rollout_id: str, after_id: int) -> Sequence[Event]:
    """A rollout's events with an id above ``after_id``, in id order."""
    event_log.insert_pending(session)
    return session.scalars(
        select(Event).where(Event.rollout_id == rollout_id, Event.id > after_id).order_by(Event.id)
    ).all()


def add_outbox(
    session: Session,
    rollout_id: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
    ttl: timedelta,
) -> Outbox:
    """Promise work in the caller's transaction; dispatch it after the commit."""
    row = Outbox(
        rollout_id=rollout_id,
        kind=kind,
        payload=payload,
        created_at=now,
        expires_at=now + ttl,
        attempts=0,
    )
    session.add(row)
    session.flush()
    return row


def take_due_outbox(
    session: Session,
    now: datetime,
    redispatch_after: timedelta,
    first_dispatch_grace: timedelta = timedelta(seconds=5),
    limit: int = 200,
) -> list[tuple[int, str, str]]:
    """Outbox rows to (re)dispatch as ``(id, kind, rollout_id)``: never dispatched
    ``first_dispatch_grace`` after they were written (the writer's own dispatch was
    lost), or dispatched ``redispatch_after`` ago and still neither done nor running.
    Rows past their expiry are closed as ``expired`` instead, with an event on their
    rollout."""
    expired = session.scalars(
        select(Outbox).where(Outbox.done_at.is_(None), Outbox.expires_at < now).limit(limit)
    ).all()
    for row in expired:
        row.done_at, row.outcome = now, "expired: never acknowledged done"
        append_event(
            session,
            row.rollout_id,
            "outbox_expired",
            actor="controller",
            at=now,
            message=" ".join(filter(None, [row.kind, row.payload.get("kind")]))
            + f" given up after {row.attempts} dispatch(es): never acknowledged done "
            "before it expired",
            data={"outbox_id": row.id, "kind": row.kind, "attempts": row.attempts},
        )
    stale, orphaned = now - redispatch_after, now - first_dispatch_grace
    due = and_(
        Outbox.done_at.is_(None),
        Outbox.expires_at >= now,
        or_(Outbox.claimed_until.is_(None), Outbox.claimed_until < now),
        or_(
            and_(Outbox.dispatched_at.is_(None), Outbox.created_at < orphaned),
            Outbox.dispatched_at < stale,
        ),
    )
    # The oldest ``limit`` first, and only those marked: a row marked here is a row
    # the caller sends, and the rest are taken at the next tick, not marked as sent
    # and left for the redispatch delay.
    chosen = session.scalars(select(Outbox.id).where(due).order_by(Outbox.id).limit(limit)).all()
    if not chosen:
        session.commit()
        return []
    # The conditions again: a concurrent reconcile that chose the same rows marks each
    # one only once (the second UPDATE finds it dispatched just now).
    taken = session.execute(
        update(Outbox)
        .where(Outbox.id.in_(chosen), due)
        .values(dispatched_at=now, attempts=Outbox.attempts + 1)
        .returning(Outbox.id, Outbox.kind, Outbox.rollout_id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted((row_id, kind, rollout_id) for row_id, kind, rollout_id in taken)


def mark_outbox_dispatched(session: Session, row_id: int, now: datetime) -> bool:
    """Claim the first dispatch of a row right after the commit that created it;
    False if reconcile dispatched it already (then the caller must not send it)."""
    result = session.execute(
        update(Outbox)
        .where(Outbox.id == row_id, Outbox.done_at.is_(None), Outbox.dispatched_at.is_(None))
        .values(dispatched_at=now, attempts=Outbox.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def unmark_outbox_dispatched(session: Session, row_id: int, marked_at: datetime) -> None:
    """Undo our own dispatch mark when the send failed (broker down), so reconcile
    sends the row after the first-dispatch grace instead of the redispatch delay. A
    mark reconcile has set since (another ``dispatched_at``) is left alone."""
    unmark_outbox_rows(session, [row_id], marked_at)


def unmark_outbox_rows(session: Session, row_ids: Iterable[int], marked_at: datetime) -> None:
    """``unmark_outbox_dispatched`` for several rows marked at the same moment (the
    rows of a reconcile tick it could not send)."""
    ids = list(row_ids)
    if not ids:
        return
    session.execute(
        update(Outbox)
        .where(Outbox.id.in_(ids), Outbox.done_at.is_(None), Outbox.dispatched_at == marked_at)
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def claim_outbox(session: Session, row_id: int, now: datetime, claim: timedelta) -> bool:
    """Take the right to run a row until ``now + claim``; False if it is done or
    another delivery runs it now."""
    result = session.execute(
        update(Outbox)
        .where(
            Outbox.id == row_id,
            Outbox.done_at.is_(None),
            or_(Outbox.claimed_until.is_(None), Outbox.claimed_until < now),
        )
        .values(claimed_until=now + claim)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def renew_outbox_claim(session: Session, row_id: int, held: datetime, until: datetime) -> bool:
    """A delivery still at work on a row holds it until ``until``, in the caller's
    transaction. Only if the row still holds the claim this delivery wrote last
    (``held``): False once another delivery has claimed it, or it is done."""
    result = session.execute(
        update(Outbox)
        .where(Outbox.id == row_id, Outbox.done_at.is_(None), Outbox.claimed_until == held)
        .values(claimed_until=until)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def get_outbox(session: Session, row_id: int) -> Outbox | None:
    return session.get(Outbox, row_id)


def finish_outbox(session: Session, row_id: int, outcome: str, now: datetime) -> bool:
    """Acknowledge a row done; False if it was done already (a duplicate delivery)."""
    result = session.execute(
        update(Outbox)
        .where(Outbox.id == row_id, Outbox.done_at.is_(None))
        .values(done_at=now, outcome=outcome[:2000])
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1
