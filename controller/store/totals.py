"""Measurement totals kept with the events that make them.

``/metrics`` reports how many measurements each criterion had with each verdict.
Counting them from the event log costs a scan of every measurement ever written, on
every scrape; so each session counts the measurement events it adds and adds the
counts to ``measurement_totals`` just before it commits, in the same transaction.
The events and the totals commit together or not at all, and the counter rows are
locked only for the commit itself, not for the advance that wrote the events. Each
process adds to its own shard of the rows (``TOTAL_SHARDS``, by pid), so workers
committing checks at the same moment do not queue on one row's lock; readers sum
the shards.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from typing import Any

from sqlalchemy import Insert, event, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from controller.store.models import MeasurementTotal

_PENDING = "canary_measurement_counts"
TOTAL_SHARDS = 16


def _shard() -> int:
    """This process's shard: workers of a pool have pids of their own."""
    return os.getpid() % TOTAL_SHARDS


def count_measurement(session: Session, data: dict[str, Any]) -> None:
    """Note one measurement event of ``session``; added to the totals at its commit."""
    key = (str(data.get("criterion", ""))[:64], str(data.get("verdict", ""))[:16])
    session.info.setdefault(_PENDING, Counter())[key] += 1


@lru_cache(maxsize=4)
def _upsert(dialect: str) -> Insert:
    """Add a count to its row, creating the row at the first count. On the table, not
    the mapped class: a Core statement skips the ORM's bulk insert machinery."""
    table = MeasurementTotal.__table__
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=["criterion", "verdict", "shard"],
        set_={"count": table.c.count + statement.excluded.count},
    )


@event.listens_for(Session, "before_commit")
def _add_to_totals(session: Session) -> None:
    pending: Counter[tuple[str, str]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    dialect = session.get_bind().dialect.name
    # In key order, so that two commits never wait on each other's rows in a cycle.
    shard = _shard()
    rows = [
        {"criterion": criterion, "verdict": verdict, "shard": shard, "count": count}
        for (criterion, verdict), count in sorted(pending.items())
    ]
    if dialect in ("postgresql", "sqlite"):
        # One statement, the same every time (compiled once), for all of the check's
        # rows in one executemany.
        session.execute(_upsert(dialect), rows)
        return
    for row in rows:
        updated = session.execute(
            update(MeasurementTotal)
            .where(
                MeasurementTotal.criterion == row["criterion"],
                MeasurementTotal.verdict == row["verdict"],
                MeasurementTotal.shard == shard,
            )
            .values(count=MeasurementTotal.count + row["count"])
        )
        if updated.rowcount == 0:
            session.add(MeasurementTotal(**row))


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, _previous: Any) -> None:
    """Events rolled back are not measurements that happened."""
    session.info.pop(_PENDING, None)
