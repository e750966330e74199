"""The state store on SQLite and on PostgreSQL: migrations, the event log, the lease,
and optimistic versions. Concurrency is checked on PostgreSQL, which really locks."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm.exc import StaleDataError

from config import PLANS_DIR as PLANS
from controller.lab import HAProxyServer
from controller.operations import OperationError, start_rollout
from controller.plan import Plan
from controller.plan_loader import load_plan
from controller.runtime import haproxy_router_factory
from controller.store import heartbeats, repository
from controller.store.db import make_engine, migrate, session_factory
from controller.store.models import RolloutState

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def new_rollout(url: str) -> str:
    plan = load_plan(PLANS / "demo.yaml")
    with session_factory(url)() as session:
        rollout = repository.create_rollout(
            session,
            service="api",
            canary_version="2",
            stable_version="1",
            plan_name=plan.name,
            plan=plan.model_dump(mode="json"),
            created_by="t",
            now=NOW,
        )
        session.commit()
        return rollout.id


def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)
    tables = set(inspect(make_engine(database_url)).get_table_names())
    assert {"rollouts", "events", "alembic_version"} <= tables


def test_rollout_round_trips_with_utc_times_and_ordered_events(database_url: str) -> None:
    migrate(database_url)
    rollout_id = new_rollout(database_url)
    with session_factory(database_url)() as session:
        for i in range(3):
            repository.append_event(
                session,
                rollout_id,
                "measurement",
                actor="c",
                at=NOW + timedelta(seconds=i),
                message=str(i),
                data={"value": i, "nan": "nan"},
            )
        session.commit()
    with session_factory(database_url)() as session:
        rollout = repository.get_rollout(session, rollout_id)
        assert rollout.next_check_at == NOW and rollout.next_check_at.tzinfo is not None
        events = repository.events_for(session, rollout_id)
        assert [e.kind for e in events] == ["created", "measurement", "measurement", "measurement"]
        assert [e.data.get("value") for e in events[1:]] == [0, 1, 2]


def test_events_are_written_with_the_commit_in_append_order_and_forgotten_on_rollback(
    database_url: str,
) -> None:
    """Events wait in the session for its commit and go in with one statement: a
    read in the same transaction still sees them, the order is the append order
    (ids), and a rollback (before or after anything touched the database) drops
    them with the rest of the transaction."""
    migrate(database_url)
    rollout_id = new_rollout(database_url)

    def append(session, message: str) -> None:
        repository.append_event(
            session, rollout_id, "note", actor="t", at=NOW, message=message, data={"m": message}
        )

    with session_factory(database_url)() as session:
        append(session, "lost before anything")
        session.rollback()
        append(session, "first")
        seen = [e.message for e in repository.events_for(session, rollout_id, ["note"])]
        assert seen == ["first"]
        append(session, "second")
        rollout = repository.get_rollout(session, rollout_id)
        rollout.reason = "touched"
        append(session, "third")
        session.commit()
        append(session, "lost after a read")
        repository.get_rollout(session, rollout_id)
        session.rollback()
    with session_factory(database_url)() as session:
        notes = repository.events_for(session, rollout_id, ["note"])
        assert [e.message for e in notes] == ["first", "second", "third"]
        assert [e.id for e in notes] == sorted(e.id for e in notes)
        assert repository.get_rollout(session, rollout_id).reason == "touched"


def test_claim_is_exclusive_until_released(database_url: str) -> None:
    migrate(database_url)
    rollout_id = new_rollout(database_url)
    sessions = session_factory(database_url)
    states = [RolloutState.PENDING]
    with sessions() as a, sessions() as b:
        assert repository.claim(a, rollout_id, "a", NOW, LEASE, states) is not None
        assert (
            repository.claim(b, rollout_id, "b", NOW + timedelta(seconds=5), LEASE, states) is None
        )
        repository.release(b, rollout_id, "b")  # not the owner: no effect
        assert repository.get_rollout(b, rollout_id).lease_owner == "a"
        repository.release(a, rollout_id, "a")
        assert repository.claim(b, rollout_id, "b", NOW, LEASE, states) is not None


def test_on_sqlite_a_lease_expires_by_the_hosts_clock(sqlite_url: str) -> None:
    migrate(sqlite_url)
    rollout_id = new_rollout(sqlite_url)
    states = [RolloutState.PENDING]
    with session_factory(sqlite_url)() as session:
        assert repository.claim(session, rollout_id, "a", NOW, LEASE, states) is not None
        later = NOW + LEASE + timedelta(seconds=1)
        assert repository.claim(session, rollout_id, "b", later, LEASE, states) is not None


def test_on_postgresql_leases_go_by_the_database_clock(postgres_url: str) -> None:
    """A worker whose clock runs an hour ahead cannot take a lease another holds; the
    lease expires when the database's clock says so."""
    migrate(postgres_url)
    rollout_id = new_rollout(postgres_url)
    sessions = session_factory(postgres_url)
    states = [RolloutState.PENDING]
    short = timedelta(seconds=1)
    with sessions() as a, sessions() as b:
        assert repository.claim(a, rollout_id, "a", datetime.now(UTC), short, states)
        ahead = datetime.now(UTC) + timedelta(hours=1)
        assert repository.claim(b, rollout_id, "b", ahead, LEASE, states) is None
        behind = datetime.now(UTC) - timedelta(hours=1)
        time.sleep(1.2)
        assert repository.claim(b, rollout_id, "b", behind, LEASE, states) is not None


def test_only_one_of_many_racing_workers_gets_the_lease(postgres_url: str) -> None:
    migrate(postgres_url)
    rollout_id = new_rollout(postgres_url)
    sessions = session_factory(postgres_url)
    barrier = threading.Barrier(8)
    winners: list[str] = []

    def race(name: str) -> None:
        with sessions() as session:
            barrier.wait()
            if (
                repository.claim(session, rollout_id, name, NOW, LEASE, [RolloutState.PENDING])
                is not None
            ):
                winners.append(name)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_a_stale_write_fails_instead_of_overwriting(database_url: str) -> None:
    migrate(database_url)
    rollout_id = new_rollout(database_url)
    sessions = session_factory(database_url)
    with sessions() as worker:
        rollout = repository.claim(worker, rollout_id, "w", NOW, LEASE, [RolloutState.PENDING])
        with sessions() as api:
            assert repository.request_rollback(
                api, rollout_id, reason="alert", actor="api", now=NOW
            )
        rollout.weight = 50
        with pytest.raises(StaleDataError):
            worker.commit()
    with sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        assert rollout.state == "rolling_back" and rollout.weight is None


def test_two_racing_starts_of_one_service_leave_exactly_one_rollout(
    postgres_url: str, haproxy: HAProxyServer
) -> None:
    """The database, not a check before the insert, keeps one active rollout per
    service: eight starts at the same moment, one wins, the others are told why."""
    migrate(postgres_url)
    data = load_plan(PLANS / "demo.yaml").model_dump(mode="json")
    data["traffic"] = {"backend": haproxy.backend}  # servers stable and canary, no slot URLs
    urls = {"stable_url": "http://127.0.0.1:9", "canary_url": "http://127.0.0.1:9"}
    kept = {k: v for k, v in data["variables"].items() if k not in ("blue_url", "green_url")}
    data["variables"] = {**kept, **urls}
    data["overridable"] = {k: v for k, v in data["overridable"].items() if k in kept}
    plan = Plan.from_data(data)
    sessions = session_factory(postgres_url)
    router_for = haproxy_router_factory(haproxy.socket_path)
    barrier = threading.Barrier(8)
    won: list[str] = []
    refused: list[str] = []

    def race(version: str) -> None:
        with sessions() as session:
            barrier.wait()
            try:
                rollout = start_rollout(
                    session,
                    plan,
                    service="checkout",
                    version=version,
                    stable="1.0.0",
                    created_by="t",
                    now=datetime.now(UTC),
                    router_for=router_for,
                )
                won.append(rollout.id)
            except OperationError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=race, args=(f"2.0.{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, (won, refused)
    assert len(refused) == 7
    assert all("already has an active rollout" in message for message in refused)
    with sessions() as session:
        assert [r.id for r in repository.list_rollouts(session, service="checkout")] == won


def test_a_tick_marks_dispatched_only_the_outbox_rows_it_returns(database_url: str) -> None:
    """Issue 28, case 10, on both backends: 250 rows due, 200 taken and marked, the
    other 50 untouched and taken by the next tick."""
    migrate(database_url)
    rollout_id = new_rollout(database_url)
    sessions = session_factory(database_url)
    with sessions() as session:
        rows = [
            repository.add_outbox(session, rollout_id, "notify", {"kind": "x"}, NOW, LEASE).id
            for _ in range(250)
        ]
        session.commit()
    tick, redispatch = NOW + timedelta(seconds=6), timedelta(seconds=60)
    with sessions() as session:
        first = repository.take_due_outbox(session, tick, redispatch)
        assert [row_id for row_id, _, _ in first] == rows[:200]
        rest = [repository.get_outbox(session, row_id) for row_id in rows[200:]]
        assert all(row.dispatched_at is None for row in rest)
    with sessions() as session:
        second = repository.take_due_outbox(session, tick + timedelta(seconds=2), redispatch)
        assert [row_id for row_id, _, _ in second] == rows[200:]


def test_the_reconcile_heartbeat_is_one_row_that_only_moves_forward(database_url: str) -> None:
    migrate(database_url)
    sessions = session_factory(database_url)
    with sessions() as session:
        assert heartbeats.last_run(session) is None
        for at, by in [(NOW, "a"), (NOW + timedelta(seconds=2), "b"), (NOW, "late")]:
            heartbeats.record(session, heartbeats.RECONCILE, at, by)
            session.commit()
    with sessions() as session:
        beat = heartbeats.last_run(session)
        assert (beat.at, beat.by) == (NOW + timedelta(seconds=2), "b")
