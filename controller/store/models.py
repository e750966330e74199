"""Tables of record: rollouts and their append-only event log.

The database, not Redis and not a worker's memory, is the state of a rollout.
``version`` is SQLAlchemy's optimistic-concurrency counter: a write based on a
stale read fails instead of silently overwriting someone else's decision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RolloutState(StrEnum):
    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    ABORTED = "aborted"


ADVANCING_STATES = (RolloutState.PENDING, RolloutState.BLOCKED, RolloutState.RUNNING)
# States an advance may act in: paused rollouts that carry traffic are still measured
# (pausing stops progress, never protection).
WATCHED_STATES = (*ADVANCING_STATES, RolloutState.PAUSED)
ROLLBACK_STATES = (RolloutState.ROLLING_BACK, RolloutState.ROLLBACK_FAILED)
ACTIVE_STATES = (*ADVANCING_STATES, RolloutState.PAUSED, *ROLLBACK_STATES)
FINAL_STATES = (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)
# A rollback was asked for: traffic must be on stable (or going there) in these states.
ROLLBACK_INTENT_STATES = (*ROLLBACK_STATES, RolloutState.ROLLED_BACK, RolloutState.ABORTED)


_ACTIVE_SQL = "state IN (" + ", ".join(f"'{s}'" for s in ACTIVE_STATES) + ")"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    service: Mapped[str] = mapped_column(String(128), index=True)
    canary_version: Mapped[str] = mapped_column(String(128))
    stable_version: Mapped[str] = mapped_column(String(128))
    plan_name: Mapped[str] = mapped_column(String(64))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(32), index=True)
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    step_started_at: Mapped[datetime | None]
    weight: Mapped[int | None] = mapped_column(Integer, default=None)
    next_check_at: Mapped[datetime] = mapped_column(index=True)
    analysis: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    tripped_criterion: Mapped[str | None] = mapped_column(String(64), default=None)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # The HAProxy servers this rollout treats as stable and canary (fixed at start;
    # in swap mode they alternate between rollouts of a service).
    stable_slot: Mapped[str | None] = mapped_column(String(64), default=None)
    canary_slot: Mapped[str | None] = mapped_column(String(64), default=None)
    # Set when reconcile puts an advance on the queue, cleared when one claims the
    # rollout: a queued advance is never queued again (until it is presumed lost).
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}
    # One active rollout per service, whichever door a start comes in by: two racing
    # starts cannot both commit (migration 0006 keeps the state list in step).
    __table_args__ = (
        Index(
            "uq_rollouts_one_active_per_service",
            "service",
            unique=True,
            postgresql_where=text(_ACTIVE_SQL),
            sqlite_where=text(_ACTIVE_SQL),
        ),
    )


class Event(Base):
    """One thing that happened to a rollout. Rows are only ever inserted."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(48))
    step_index: Mapped[int | None] = mapped_column(Integer, default=None)
    actor: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_events_rollout_id_id", "rollout_id", "id"),)


class Incident(Base):
    """What the rollback runbook opens: the trigger, the timeline and a metrics snapshot."""

    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    opened_at: Mapped[datetime]
    severity: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    trigger: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_by: Mapped[str] = mapped_column(String(128))
    timeline: Mapped[list[Any]] = mapped_column(JSON)
    snapshot: Mapped[list[Any]] = mapped_column(JSON)
    webhook_status: Mapped[str | None] = mapped_column(Text, default=None)


class Outbox(Base):
    """Work promised to happen after a state change (a runbook, a notification),
    written in the same transaction as the change and dispatched to the broker after
    it. Reconcile dispatches again what is not done, so a lost message or a killed
    worker loses nothing; a row past ``expires_at`` is given up, and says so."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Set by the delivery that runs the row, so a second delivery of the same row
    # (a redispatch while it still runs) does nothing. A notification's claim
    # outlives its task's hard time limit; a runbook's delivery renews its claim
    # while it runs (controller.outbox.heartbeat). A worker killed mid-run frees the
    # row only by expiry.
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    done_at: Mapped[datetime | None] = mapped_column(default=None)
    outcome: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (Index("ix_outbox_pending", "done_at", "dispatched_at"),)


class MeasurementTotal(Base):
    """How many measurements each criterion has had with each verdict, ever: kept
    in the transaction that writes the measurement events (``controller.store.totals``),
    so ``/metrics`` reads a few rows instead of counting the whole event log.

    Each criterion and verdict has up to ``TOTAL_SHARDS`` rows, one per worker
    process (by pid), summed when read: two workers committing checks at once add
    to different rows instead of queueing on one row lock."""

    __tablename__ = "measurement_totals"

    criterion: Mapped[str] = mapped_column(String(64), primary_key=True)
    verdict: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, default=0)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class Release(Base):
    """The stable version of each service: what the next rollout compares against."""

    __tablename__ = "releases"

    service: Mapped[str] = mapped_column(String(128), primary_key=True)
    stable_version: Mapped[str] = mapped_column(String(128))
    rollout_id: Mapped[str | None] = mapped_column(String(32), default=None)
    marked_at: Mapped[datetime]
    # The server that carries the stable version (None: the plan's stable_server).
    stable_slot: Mapped[str | None] = mapped_column(String(64), default=None)
    # Set by a rollback for failed writes (release checklist §3.3): the data must be
    # reconciled, and someone must say so, before the service's next rollout starts.
    reconcile_required_by: Mapped[str | None] = mapped_column(String(32), default=None)
    reconcile_required_reason: Mapped[str | None] = mapped_column(Text, default=None)
    reconcile_required_at: Mapped[datetime | None] = mapped_column(default=None)


class RegisteredPlan(Base):
    """One version of a plan an admin registered by name. Operators start rollouts
    from these (the API refuses them inline plans): the release process a plan
    encodes is reviewed once, by who registered it, and every version is kept."""

    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text)  # the YAML as registered
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the source
    registered_by: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime]
    note: Mapped[str] = mapped_column(Text, default="")


class Heartbeat(Base):
    """When a periodic job last ran, one row per job (``reconcile``), written by the
    job itself at every run. A job that nobody runs writes nothing; the readers
    (``canary status``, ``canary start``, ``/metrics``) tell that silence apart from
    a quiet system, so a rollout never waits for ever without anyone told why."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime]
    # Who ran it last (``host:pid:token``), to find the worker on-call must look at.
    by: Mapped[str] = mapped_column(String(128))
