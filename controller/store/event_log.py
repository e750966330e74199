"""Events written with the commit that makes them true, in one statement.

A check writes a handful of events (one per stop criterion, the slots' versions,
a decision) and nothing reads them back before its commit. Added to the session
one by one as mapped objects, each went through the ORM's unit of work and came
back with its id: at a hundred checks a second that bookkeeping was a fifth of a
worker's CPU. So an event is kept in the session's ``info`` until the commit, and
inserted then, all of the transaction's events in one executemany, in the order
they were appended (``events.id`` is the order the API, the CLI and incidents
show). A rollback forgets them with everything else of its transaction. A read of
the event log in the same transaction (``repository.events_for``) inserts the
pending ones first, so it sees what was appended.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from controller.store.models import Event

_PENDING = "canary_pending_events"


def append(session: Session, row: dict[str, Any]) -> None:
    """Keep one event (the ``events`` table's columns, id aside) for the commit.
    The session's transaction begins here if nothing began it yet, so that a
    rollback before anything else was done still forgets the event."""
    if not session.in_transaction():
        session.begin()
    session.info.setdefault(_PENDING, []).append(row)


def insert_pending(session: Session) -> None:
    """Insert the events appended so far in this transaction, in their order. Rows
    they refer to (a rollout created in the same transaction) are flushed first."""
    rows: list[dict[str, Any]] | None = session.info.pop(_PENDING, None)
    if not rows:
        return
    session.flush()
    session.execute(insert(Event.__table__), rows)


@event.listens_for(Session, "before_commit")
def _insert_before_commit(session: Session) -> None:
    insert_pending(session)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, _previous: Any) -> None:
    """Events of a transaction rolled back did not happen."""
    session.info.pop(_PENDING, None)
