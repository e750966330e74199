"""When periodic jobs last ran (the ``heartbeats`` table), written by the job itself.

Beat firing the reconcile task proves nothing: with no worker on the reconcile
queue the messages expire unread. Only the task running writes its row, so the
row's age is how long nothing has handed out due work, whatever the reason.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from sqlalchemy import Insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from controller.store.models import Heartbeat

RECONCILE = "reconcile"


@lru_cache(maxsize=4)
def _upsert(dialect: str) -> Insert:
    """Insert the job's row, or move the existing one forward: one statement, so two
    reconcile workers ticking at once never fail on the primary key."""
    table = Heartbeat.__table__
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=["name"],
        set_={"at": statement.excluded.at, "by": statement.excluded.by},
        # A tick that started earlier but commits later must not move the time back.
        where=table.c.at < statement.excluded.at,
    )


def record(session: Session, name: str, at: datetime, by: str) -> None:
    """Note that job ``name`` ran at ``at`` (in the caller's transaction)."""
    session.execute(
        _upsert(session.get_bind().dialect.name), {"name": name, "at": at, "by": by[:128]}
    )


def last_run(session: Session, name: str = RECONCILE) -> Heartbeat | None:
    """The job's row (when it last ran, and by whom), or None if it never ran."""
    return session.scalars(select(Heartbeat).where(Heartbeat.name == name)).one_or_none()
