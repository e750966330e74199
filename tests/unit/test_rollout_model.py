"""A model of the rollout loop that tries the interleavings for us (issue 28, section 2).

Hand-written scenarios test the orders someone thought of; the bugs that make "rolled
back" a lie are in the orders nobody thought of: an API rollback landing while an
advance holds the lease, a worker killed between two commits, a runbook step that
outlives its claim. This is a hypothesis ``RuleBasedStateMachine`` over the real
store (SQLite here, PostgreSQL in ``tests/integration/test_rollout_model_postgres.py``),
the real engine (``advance``), rollback, outbox, runbook and operations, with only the
outside world faked: HAProxy's two servers, what each slot answers at ``/version``,
the redeploy hook, Prometheus, the broker and the clock. Every actor (the worker that
advances, the rollback worker, the API, the runbook worker) has its own sessions and
lease owner, as separate processes would.

Rules are what happens in production: a check falls due, the clock moves, a worker
dies in the middle of an advance and its lease expires later, people pause, resume,
approve, abort and roll back, an alert arrives with the broker up or down, someone
sets the router's weight by hand, the router and Prometheus fail, the canary's errors
rise, the redeploy hook makes progress, reconcile runs. Interleavings are rules too:
one cuts another actor's operation into an advance (or a rollback) at its router call,
before or after the weight moves, the way a second process would.

After every rule the promises are checked (``Invariants``): rolled back means traffic
on a server answering the stable version, a rollback is never lost, a runbook runs
once, and the rest listed there.

Running deeper (the suite runs a modest number of examples, deterministically)::

    CANARY_MODEL_EXAMPLES=500 CANARY_MODEL_STEPS=80 .venv/bin/pytest \\
        tests/unit/test_rollout_model.py tests/integration/test_rollout_model_postgres.py

``CANARY_MODEL_SEED=N`` explores with another seed instead of the fixed one;
``CANARY_MODEL_SKIP=name,name`` leaves out invariants (``Invariants`` method names) to
look past a failure already known; ``CANARY_MODEL_SHRINK_SECONDS`` bounds the time spent
shrinking a failure (45 s by default). A failure prints the shrunk rule sequence
(``state.rule(...)`` lines) that breaks a promise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine as conjecture_engine
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import Engine, create_engine, delete, event, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from controller import checks, hooks, operations, outbox, slots
from controller import rollback as rollback_module
from controller.engine import advance
from controller.operations import (
    OperationError,
    abort_rollout,
    approve_rollout,
    pause_rollout,
    resume_rollout,
    rollback_rollout,
    start_rollout,
)
from controller.plan import Plan
from controller.reconcile.tick import Senders
from controller.reconcile.tick import reconcile as reconcile_tick
from controller.rollback import rollback
from controller.runtime import Runtime
from controller.store import repository
from controller.store.db import migrate
from controller.store.models import (
    ACTIVE_STATES,
    WATCHED_STATES,
    Base,
    Event,
    Outbox,
    Rollout,
    RolloutState,
)
from controller.traffic.base import RouterError, Serving
from tests.unit.test_state_machine import Clock, FakeMetrics

SERVICE = "api"
STABLE, CANARY = "blue", "green"  # the plan's two HAProxy servers (slots)
LEASE = timedelta(seconds=45)
SLOW_RUNBOOK_STEP = timedelta(seconds=150)  # longer than a runbook row's claim
FAILED_SHIFT_STATES = ("rolling_back", "rollback_failed", "rolled_back", "aborted")
DEFAULT_EXAMPLES, DEFAULT_STEPS = 100, 30
OPERATIONS = (  # what another process may do while traffic moves (Model.operations)
    "alert",
    "manual rollback",
    "abort",
    "pause",
    "resume",
    "approve",
    "second rollback delivery",
    "router drift to 30",
)
DURING_A_ROLLBACK = ("second rollback delivery", "alert", "abort", "router drift to 30")


def model_settings(examples: int = DEFAULT_EXAMPLES) -> settings:
    """Deterministic in the suite (a fixed seed, no example database, so CI sees the
    same examples on every run); deeper and with other seeds through the environment."""
    chosen_seed = os.environ.get("CANARY_MODEL_SEED")
    return settings(
        max_examples=int(os.environ.get("CANARY_MODEL_EXAMPLES", examples)),
        stateful_step_count=int(os.environ.get("CANARY_MODEL_STEPS", DEFAULT_STEPS)),
        derandomize=chosen_seed is None,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.target, Phase.shrink, Phase.explain],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


# -- the outside world -----------------------------------------------------------


class WorkerDied(BaseException):
    """A worker process killed (out of memory, its node lost). Not an ``Exception``:
    nothing in the product may catch it and carry on, as nothing runs in a dead
    process. Its lease stays with it until it expires."""


class BrokerDown(ConnectionError):
    """Redis refuses the message."""


@dataclass
class Interleaving:
    """Another actor's operation, run when ``actor`` next moves traffic: ``before``
    the router applies the weight or ``after`` it, then that actor carries on."""

    actor: str
    when: str
    operation: str


@dataclass
class Broker:
    """The queues, as messages the model delivers when a rule says so."""

    up: bool = True
    rollbacks: list[str] = field(default_factory=list)
    outbox: list[tuple[int, str, str]] = field(default_factory=list)

    def enqueue_rollback(self, rollout_id: str) -> None:
        if not self.up:
            raise BrokerDown("Error 111 connecting to redis:6379. Connection refused.")
        self.rollbacks.append(rollout_id)

    def send_outbox(self, row_id: int, kind: str, rollout_id: str) -> None:
        if not self.up:
            raise BrokerDown("Error 111 connecting to redis:6379. Connection refused.")
        self.outbox.append((row_id, kind, rollout_id))


@dataclass
class World:
    """HAProxy's backend of the service (the raw weight of each server), what each
    slot answers at /version (None: restarting, a 503), a deployment in progress per
    slot, the router's failures to come, and what was done to it."""

    clock: Clock
    metrics: FakeMetrics
    weights: dict[str, int] = field(default_factory=lambda: {STABLE: 100, CANARY: 0})
    serves: dict[str, str | None] = field(default_factory=lambda: {STABLE: "1.0", CANARY: None})
    deploying: dict[str, tuple[str, int]] = field(default_factory=dict)
    router_failures: int = 0
    router_down: bool = False
    interleavings: list[Interleaving] = field(default_factory=list)
    hook_calls: list[list[str]] = field(default_factory=list)
    slow_runbook: Callable[[], None] | None = None  # runs while a runbook step is slow

    def share(self, canary: str) -> int:
        """The canary server's share in percent, as HAProxyRouter reads it."""
        stable = STABLE if canary == CANARY else CANARY
        total = self.weights[canary] + self.weights[stable]
        if total == 0:
            raise RouterError("both servers have weight 0")
        return round(100 * self.weights[canary] / total)

    def set_share(self, canary: str, weight: int) -> None:
        stable = STABLE if canary == CANARY else CANARY
        self.weights[canary], self.weights[stable] = weight, 100 - weight

    def fail_if_failing(self) -> None:
        if self.router_down:
            raise RouterError("runtime API socket: connection refused")
        if self.router_failures > 0:
            self.router_failures -= 1
            raise RouterError("runtime API socket: timed out")

    def run_hook(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """The plan's commands: ``deploy SLOT VERSION`` (the redeploy hook) starts a
        deployment that ``progress`` carries out; ``disable SLOT`` (the runbook's)."""
        self.hook_calls.append(list(argv))
        if argv[0] == "deploy":
            self.deploying[argv[1]] = (argv[2], 0)
        return subprocess.CompletedProcess(argv, 0, "accepted\n", "")

    def progress(self) -> None:
        """Each deployment one phase on: the slot restarts (answers 503), then serves
        the version deployed."""
        for slot, (version, phase) in list(self.deploying.items()):
            if phase == 0:
                self.serves[slot] = None
                self.deploying[slot] = (version, 1)
            else:
                self.serves[slot] = version
                del self.deploying[slot]

    def served_version(self, url: str, check: Any) -> str:
        """``controller.slots.served_version``: the slot behind ``url`` answers."""
        slot = url.split("//", 1)[1].split("/", 1)[0]
        version = self.serves.get(slot)
        if version is None:
            raise RouterError(f"GET {url}/version: HTTP 503 (restarting)")
        return version

    def http_check(self, check: Any, values: dict[str, str], client: Any) -> tuple[bool, str]:
        """``controller.checks.run_http_check`` (the runbook's stable healthcheck, the
        only HTTP check of the plan): the stable slot answers if it serves anything. A
        check armed slow takes longer than a runbook row's claim, and what happens
        meanwhile (``slow_runbook``) happens."""
        if self.slow_runbook is not None:
            meanwhile, self.slow_runbook = self.slow_runbook, None
            self.clock.now += SLOW_RUNBOOK_STEP
            meanwhile()
        slot = values.get("stable_slot", STABLE)
        ok = self.serves.get(slot) is not None
        return ok, f"{check.name}: {slot} {'200' if ok else '503'}"


class ModelRouter:
    """A ``TrafficRouter`` over the world's backend, for one actor and one rollout's
    slots. Before each weight it applies, it asks the store (committed state, as
    another process sees it) whether a rollback was requested: raising the canary's
    weight after that breaks "rollback beats everything"."""

    def __init__(self, model: Model, actor: Actor, stable: str, canary: str) -> None:
        self.model, self.actor, self.stable, self.canary = model, actor, stable, canary

    def set_canary_weight(self, weight: int) -> None:
        self.actor.refuse_if_dead()
        world = self.model.world
        cut = next((c for c in world.interleavings if c.actor == self.actor.name), None)
        if cut is not None:
            world.interleavings.remove(cut)
        if cut is not None and cut.when == "before":
            self.model.interleave(cut)
        world.fail_if_failing()
        self.model.check_rollback_beats(self.actor.name, self.canary, weight)
        world.set_share(self.canary, weight)
        self.actor.maybe_die("router set")
        if cut is not None and cut.when == "after":
            self.model.interleave(cut)

    def get_canary_weight(self) -> int:
        self.actor.refuse_if_dead()
        self.model.world.fail_if_failing()
        return self.model.world.share(self.canary)

    def serving(self, role: str) -> Serving:
        slot = self.stable if role == "stable" else self.canary
        if self.model.world.serves.get(slot) is None:
            return Serving(f"HAProxy server {SERVICE}/{slot} is down (restarting)")
        return Serving(None)


# -- actors: processes with their own sessions and lease owner ---------------------


class Actor:
    """One process (a worker, the API): its sessions, its lease owner, and whether it
    is to die at a point of its next operation. Killed after a commit, it sends nothing
    more: its next statement, router call or broker message raises ``WorkerDied``, and
    no ``finally`` of the product gives its lease back."""

    def __init__(self, model: Model, name: str, generation: int) -> None:
        self.model, self.name = model, name
        self.owner = f"{name}-{generation}"
        self.dead = False
        self.die_at: str | None = None  # "commit N" or "router set"
        self.commits = 0
        self.sessions: sessionmaker[Session] = sessionmaker(model.engine, expire_on_commit=False)
        event.listen(self.sessions, "after_commit", self._after_commit)
        for hook in ("do_orm_execute", "before_flush", "before_commit"):
            event.listen(self.sessions, hook, self.refuse_if_dead)
        self.runtime = Runtime(
            sessions=self.sessions,
            metrics=model.world.metrics,
            router_for=self._router_for,
            lease=LEASE,
            rollback_attempts=3,
            rollback_backoff_seconds=0,
            clock=model.world.clock,
            owner=self.owner,
            enqueue_rollback=self._enqueue_rollback,
            send_outbox=self._send_outbox,
        )

    def _router_for(self, plan: Plan, values: dict[str, str]) -> ModelRouter:
        return ModelRouter(self.model, self, values["stable_slot"], values["canary_slot"])

    def _enqueue_rollback(self, rollout_id: str) -> None:
        self.refuse_if_dead()
        self.model.broker.enqueue_rollback(rollout_id)

    def _send_outbox(self, row_id: int, kind: str, rollout_id: str) -> None:
        self.refuse_if_dead()
        self.model.broker.send_outbox(row_id, kind, rollout_id)

    def arm(self, point: str) -> None:
        self.die_at, self.commits = point, 0

    def maybe_die(self, point: str) -> None:
        if self.die_at == point:
            self.dead = True
            raise WorkerDied(f"{self.owner} killed at {point}")

    def _after_commit(self, session: Session) -> None:
        """Killed right after this commit: the commit stands, nothing after it runs
        (raising here would leave the session half-committed, which no crash does)."""
        if self.die_at is not None and self.die_at.startswith("commit"):
            self.commits += 1
            if self.die_at == f"commit {self.commits}":
                self.dead = True

    def refuse_if_dead(self, *_: Any) -> None:
        if self.dead:
            raise WorkerDied(f"{self.owner} was killed")


# -- the model: world, store, actors and what the invariants remember --------------


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=OFF")  # a test store: no fsync per commit
    cursor.close()


def _postgres_lock_timeout(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET lock_timeout = '50ms'")
    cursor.close()
    dbapi_connection.commit()


def model_engine(url: str) -> Engine:
    """The product's engine settings, but a lock wait fails at once: all actors run in
    one thread here, so an actor that would wait for another's lock (the API's write
    while an advance holds the row) would wait for ever. The model then runs that
    operation again after the actor holding the lock is done, which is when it would
    have gone through."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 0})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_size=5, max_overflow=10)
        event.listen(engine, "connect", _postgres_lock_timeout)
    return engine


def waited_for_a_lock(exc: OperationalError) -> bool:
    text_ = str(exc).lower()
    return "locked" in text_ or "lock timeout" in text_ or "locknotavailable" in text_


class Model:
    """Everything one example runs on: a store emptied for it, the world, the broker,
    the actors, and the current rollout of the service."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url, self.engine = url, engine
        self.postgres = not url.startswith("sqlite")
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))
        self.world = World(Clock(), FakeMetrics())
        self.broker = Broker()
        self.generations: dict[str, int] = {}
        self.actors: dict[str, Actor] = {}
        self.dead_owners: set[str] = set()
        for name in ("worker", "rollback", "rollback2", "api", "runbook", "runbook2", "reconcile"):
            self.replace(name)
        self.observer = sessionmaker(engine, expire_on_commit=False)
        self.plan: Plan | None = None
        self.current: str | None = None
        self.versions = 1
        self.deferred: list[Callable[[], object]] = []
        self.interleaving = False
        # (actor, canary slot, weight before, weight set, state) of each raise of the
        # canary's weight made after a rollback was requested
        self.raised_after_rollback: list[tuple[str, str, int, int, str]] = []
        # Rollouts whose router changed with no record of it (a person's change by hand,
        # a worker killed after it moved traffic) until their next check reads it.
        self.unread_change: set[str] = set()
        self.seen_events: dict[int, tuple[Any, ...]] = {}

    def replace(self, name: str) -> Actor:
        """A (re)started process: a new lease owner, as a restarted worker gets."""
        self.generations[name] = self.generations.get(name, 0) + 1
        actor = Actor(self, name, self.generations[name])
        self.actors[name] = actor
        return actor

    # -- running the product ---------------------------------------------------

    def as_actor(self, name: str, operation: Callable[[Actor], object]) -> object:
        """Run one operation of one process; a death is the end of that process. What
        an interleaving had to postpone (it waited for a lock) runs once it is done."""
        actor = self.actors[name]
        try:
            return operation(actor)
        except WorkerDied:
            return None
        finally:
            if actor.dead:  # killed, whether or not it had anything left to send
                self.dead_owners.add(actor.owner)
                self.replace(name)
                if self.current is not None:  # it may have moved traffic it never recorded
                    self.unread_change.add(self.current)
            actor.die_at = None
            if not self.interleaving:
                self.run_deferred()

    def run_deferred(self) -> None:
        while self.deferred:
            self.deferred.pop(0)()

    def interleave(self, cut: Interleaving) -> None:
        """Run another actor's operation now, inside the one in flight. If it has to
        wait for a lock the one in flight holds, it goes through after that one ends."""
        operation = self.operations()[cut.operation]
        self.interleaving = True
        try:
            operation()
        except OperationalError as exc:
            if not waited_for_a_lock(exc):
                raise
            self.deferred.append(operation)
        finally:
            self.interleaving = False

    def operations(self) -> dict[str, Callable[[], object]]:
        """What another process may do while an advance or a rollback is in flight
        (the names are ``OPERATIONS``)."""
        return {
            "alert": self.alert,
            "manual rollback": self.manual_rollback,
            "abort": self.abort,
            "pause": self.pause,
            "resume": self.resume,
            "approve": self.approve,
            "second rollback delivery": lambda: self.run_rollback("rollback2"),
            "router drift to 30": lambda: self.drift(30),
        }

    def rollout(self) -> Rollout | None:
        """The current rollout as committed (what another process reads)."""
        if self.current is None:
            return None
        with self.observer() as session:
            return repository.get_rollout(session, self.current)

    def hand_over(self, rollout_id: str) -> None:
        """As the API's ``hand_over_rollback``: the rollback queue, or, with the broker
        down, the rollback run by the API itself at once."""
        try:
            self.broker.enqueue_rollback(rollout_id)
        except BrokerDown:
            self.as_actor("api", lambda api: rollback(api.runtime, rollout_id))

    def person(self, do: Callable[[Session, str], object]) -> None:
        """An operation through the API on the current rollout; a refusal is fine."""
        if self.current is None:
            return
        with self.actors["api"].sessions() as session:
            try:
                do(session, self.current)
            except OperationError:
                session.rollback()

    def alert(self) -> None:
        """The Alertmanager webhook: the rollback requested, then handed over."""
        if self.current is None:
            return
        with self.actors["api"].sessions() as session:
            accepted = repository.request_rollback(
                session,
                self.current,
                reason="alert CanaryErrors fired",
                actor="alertmanager",
                now=self.world.clock(),
                trigger={"kind": "alert", "alertname": "CanaryErrors"},
            )
        if accepted:
            self.hand_over(self.current)

    def manual_rollback(self) -> None:
        accepted = []

        def do(session: Session, rollout_id: str) -> None:
            now = self.world.clock()
            outcome = rollback_rollout(session, rollout_id, reason="bad", actor="bob", now=now)
            accepted.append(outcome.accepted)

        self.person(do)
        if any(accepted) and self.current:
            self.hand_over(self.current)

    def abort(self) -> None:
        accepted = []

        def do(session: Session, rollout_id: str) -> None:
            now = self.world.clock()
            outcome = abort_rollout(session, rollout_id, reason="stop", actor="bob", now=now)
            accepted.append(outcome.accepted)

        self.person(do)
        if any(accepted) and self.current:
            self.hand_over(self.current)

    def pause(self) -> None:
        self.person(
            lambda s, r: pause_rollout(s, r, reason="hold on", actor="bob", now=self.world.clock())
        )

    def resume(self) -> None:
        self.person(lambda s, r: resume_rollout(s, r, actor="bob", now=self.world.clock()))

    def approve(self) -> None:
        self.person(lambda s, r: approve_rollout(s, r, name="alice", now=self.world.clock()))

    def resolve_by_hand(self) -> None:
        rollout = self.rollout()
        if rollout is None or rollout.state != RolloutState.ROLLBACK_FAILED:
            return
        self.world.set_share(rollout.canary_slot or CANARY, 0)
        self.world.serves[rollout.stable_slot or STABLE] = rollout.stable_version
        self.world.deploying.pop(rollout.stable_slot or STABLE, None)
        resolve = getattr(operations, "resolve_rollout", None)
        if resolve is None:  # a build without ``canary resolve``: nothing to ask
            return
        api = self.actors["api"]
        self.person(
            lambda s, r: resolve(
                s,
                r,
                reason="canary put to 0 by hand",
                actor="carol",
                now=self.world.clock(),
                router_for=api.runtime.router_for,
            )
        )

    def drift(self, weight: int) -> None:
        """Someone sets the weight by hand (or a reload resets it) while a rollout is
        active: the record is wrong until the next check reads the router."""
        rollout = self.rollout()
        if rollout is None or rollout.state not in ACTIVE_STATES:
            return
        self.world.set_share(rollout.canary_slot or CANARY, weight)
        self.unread_change.add(rollout.id)

    def run_advance(self, when_due: bool = True) -> None:
        rollout = self.rollout()
        if rollout is None:
            return
        if when_due:
            self.world.clock.now = max(self.world.clock.now, rollout.next_check_at)

        def step(worker: Actor) -> None:
            result = advance(worker.runtime, rollout.id)
            if result.acted:
                self.unread_change.discard(rollout.id)

        self.as_actor("worker", step)

    def run_rollback(self, name: str = "rollback", rollout_id: str | None = None) -> None:
        target = rollout_id or self.current
        if target is not None:
            self.as_actor(name, lambda actor: rollback(actor.runtime, target))

    def reconcile(self) -> None:
        """A reconcile tick (``controller.reconcile.tick``), its messages to the model's
        broker. The advances it hands out are the ``checks`` rules' business (a check
        rule is the delivery of one), so their messages are dropped."""

        def advances(due: object, labels: object) -> None:
            if not self.broker.up:
                raise BrokerDown("Error 111 connecting to redis:6379. Connection refused.")

        senders = Senders(
            rollback=self.broker.enqueue_rollback,
            advances=advances,
            outbox=self.broker.send_outbox,
            stage_label=lambda rollout_id, step_index: "",
        )
        runtime = self.actors["reconcile"].runtime
        self.as_actor(
            "reconcile",
            lambda _: reconcile_tick(runtime, senders, lookahead=timedelta(0), batch_size=50),
        )

    def deliver_outbox(self, name: str = "runbook") -> None:
        if self.broker.up and self.broker.outbox:
            row_id, _, _ = self.broker.outbox.pop(0)
            self.as_actor(name, lambda actor: outbox.run_outbox_row(actor.runtime, row_id))

    def start_next(self) -> None:
        """A new release of the service; the SRE deployed it into the canary slot."""
        assert self.plan is not None
        version = f"{self.versions + 1}.0"
        with self.actors["api"].sessions() as session:
            released = repository.stable_release(session, SERVICE) is not None
            try:
                created = start_rollout(
                    session,
                    self.plan,
                    service=SERVICE,
                    version=version,
                    stable=None if released else "1.0",  # the store's, once it has one
                    created_by="sre",
                    now=self.world.clock(),
                    router_for=self.actors["api"].runtime.router_for,
                )
            except OperationError:
                session.rollback()
                return
            canary = created.canary_slot or CANARY
            self.current, self.versions = created.id, self.versions + 1
        self.world.serves[canary] = version
        self.world.deploying.pop(canary, None)

    def expire_dead_leases(self) -> None:
        """Time passes beyond the lease: a dead worker's lease expires. PostgreSQL
        measures leases by its own clock, so there the dead owners' leases are moved
        into the past as that much time would have."""
        self.world.clock.now += LEASE + timedelta(seconds=1)
        if self.postgres and self.dead_owners:
            with self.engine.begin() as conn:
                conn.execute(
                    update(Rollout)
                    .where(Rollout.lease_owner.in_(sorted(self.dead_owners)))
                    .values(lease_expires_at=text("clock_timestamp() - interval '1 second'"))
                )

    def check_rollback_beats(self, actor: str, canary: str, weight: int) -> None:
        """Called as a router is about to apply ``weight``. With a rollback requested
        (committed, as any process sees it) a raise of the canary's weight is noted:
        the actor that raised it must put it back before it is done (rule 5, and
        issue 28's "an advance that loses its commit and finds a rollback intent must
        put the weight back to 0 itself, at once")."""
        if self.current is None:
            return
        with self.observer() as session:
            state = session.scalar(select(Rollout.state).where(Rollout.id == self.current))
        before = self.world.share(canary)
        if state in FAILED_SHIFT_STATES and weight > before:
            self.raised_after_rollback.append((actor, canary, before, weight, str(state)))


# -- the promises, checked after every rule ----------------------------------------


def runbook_runs(events: list[Event]) -> list[list[Event]]:
    """A rollout's runbook events, one list per run (each run logs its step 1 first)."""
    runs: list[list[Event]] = []
    for e in events:
        if e.kind != "runbook":
            continue
        if e.data.get("step") == 1 or not runs:
            runs.append([])
        runs[-1].append(e)
    return runs


class Invariants:
    """What users trust us for (DESIGN.md's rules), as checks on the store and the
    world after every rule. Each message says which promise broke and what was seen;
    ``test_each_invariant_fails_when_its_promise_is_broken`` shows each can fail."""

    def __init__(self, model: Model) -> None:
        self.model = model
        with model.observer() as session:
            self.rollouts = {r.id: r for r in session.scalars(select(Rollout))}
            self.events = list(session.scalars(select(Event).order_by(Event.id)))
            runbooks = select(Outbox).where(Outbox.kind == "runbook")
            self.runbook_rows = list(session.scalars(runbooks))
        self.by_rollout: dict[str, list[Event]] = {}
        for e in self.events:
            self.by_rollout.setdefault(e.rollout_id, []).append(e)

    def check_all(self) -> None:
        skip = set(filter(None, os.environ.get("CANARY_MODEL_SKIP", "").split(",")))
        for check in (
            self.one_active_rollout_per_service,
            self.record_matches_router,
            self.no_weight_raised_after_a_rollback_request,
            self.finished_means_traffic_where_promised,
            self.rollback_decision_committed_with_its_request,
            self.runbook_steps_run_once,
            self.one_runbook_per_rollback,
            self.event_log_is_append_only_and_ordered,
            self.canary_with_traffic_checked_every_interval,
            self.step_promoted_on_evidence_from_its_weight,
            self.leases_outlive_only_dead_workers,
        ):
            if check.__name__ not in skip:
                check()

    def one_active_rollout_per_service(self) -> None:
        active = [r.id for r in self.rollouts.values() if r.state in ACTIVE_STATES]
        assert len(active) <= 1, f"two active rollouts of {SERVICE}: {active}"

    def record_matches_router(self) -> None:
        """Rule 11: while a rollout moves traffic (pending to paused), the router shows
        the weight the record says, unless the last word on the router is an error.
        A person's change by hand is allowed until the next check reads it."""
        model, rollout = self.model, self.current()
        if rollout is None or rollout.state not in WATCHED_STATES:
            return
        if rollout.id in model.unread_change:
            return
        actual = model.world.share(rollout.canary_slot or CANARY)
        if actual == (rollout.weight or 0):  # None: no step has moved traffic yet
            return
        about_router = [
            e
            for e in self.by_rollout.get(rollout.id, [])
            if e.kind in ("weight_set", "drift", "router_error", "weight_recorded")
        ]
        last = about_router[-1].kind if about_router else None
        assert last == "router_error", (
            f"{rollout.state} rollout records {rollout.weight}%, the router gives the canary "
            f"{actual}%, and the last word on the router is {last!r}"
        )

    def no_weight_raised_after_a_rollback_request(self) -> None:
        """Rule 5: once a rollback is requested, nothing leaves the canary with more
        traffic than it had: an actor that raised the weight in a race puts it back
        before it is done."""
        raised, world = self.model.raised_after_rollback, self.model.world
        left = [r for r in raised if world.share(r[1]) > r[2]]
        raised.clear()
        assert not left, "; ".join(
            f"{actor} raised the canary {before}% -> {weight}% while the rollout was "
            f"{state}, and left it at {world.share(canary)}%"
            for actor, canary, before, weight, state in left
        )

    def finished_means_traffic_where_promised(self) -> None:
        """Rules 6, 9, 14: ``rolled_back``/``aborted`` only with no canary traffic and
        the stable slot answering the stable version; ``succeeded`` only with the slot
        now called stable serving the new version with all traffic (swap: the canary
        slot at 100 %; redeploy: the stable slot, canary weight 0)."""
        rollout, world = self.current(), self.model.world
        if rollout is None or rollout.state in ACTIVE_STATES or rollout.state == "pending":
            return
        stable_slot, canary_slot = rollout.stable_slot or STABLE, rollout.canary_slot or CANARY
        share = world.share(canary_slot)
        if rollout.state in (RolloutState.ROLLED_BACK, RolloutState.ABORTED):
            assert share == 0, f"{rollout.state}, but the canary carries {share}%"
            answers = world.serves.get(stable_slot)
            assert answers == rollout.stable_version, (
                f"{rollout.state}: all traffic on the stable slot {stable_slot}, which answers "
                f"{answers or 'HTTP 503'}, not the stable version {rollout.stable_version}"
            )
        elif rollout.state == RolloutState.SUCCEEDED:
            assert self.model.plan is not None
            if self.model.plan.traffic.mode == "redeploy":
                serving, slot, expected_share = world.serves.get(stable_slot), stable_slot, 0
            else:
                serving, slot, expected_share = world.serves.get(canary_slot), canary_slot, 100
            assert share == expected_share and serving == rollout.canary_version, (
                f"succeeded, but slot {slot} answers {serving} with canary share {share}%"
            )

    def rollback_decision_committed_with_its_request(self) -> None:
        """Rule 12: a rollout whose last decision is ``rollback`` has its rollback
        requested (it is rolling back, or done rolling back)."""
        for rollout_id, events in self.by_rollout.items():
            decisions = [e for e in events if e.kind == "decision"]
            if not decisions or decisions[-1].data.get("decision") != "rollback":
                continue
            state = self.rollouts[rollout_id].state
            assert state in FAILED_SHIFT_STATES, (
                f"decision 'rollback' ({decisions[-1].message}) committed, and the rollout "
                f"is still {state} with no rollback requested"
            )

    def runbook_steps_run_once(self) -> None:
        """A runbook runs once: its steps once each, in order, no second run beside it
        (a second delivery of its row must not run it again), and its disable hook
        (step 4) acts once."""
        for rollout_id, events in self.by_rollout.items():
            runs = runbook_runs(events)
            for run in runs:
                steps = [e.data["step"] for e in run]
                assert steps == sorted(set(steps)), (
                    f"runbook of {rollout_id} logged steps {steps}: a step ran twice"
                )
            for on_stable in (True, False):
                ran = [run for run in runs if run[0].data.get("ok") is on_stable]
                assert len(ran) <= 1, (
                    f"{len(ran)} runbooks ran for the {'confirmed' if on_stable else 'failed'} "
                    f"shift of {rollout_id}"
                )
            version = self.rollouts[rollout_id].canary_version
            disabled = [
                c for c in self.model.world.hook_calls if c[0] == "disable" and c[2:] == [version]
            ]
            assert len(disabled) <= 1, (
                f"the canary {version} was disabled {len(disabled)} times (runbook step 4)"
            )

    def one_runbook_per_rollback(self) -> None:
        """A rollout has at most one runbook promised for a failed shift and one for a
        confirmed shift, however often its rollback ran or was delivered."""
        for rollout_id in self.rollouts:
            for on_stable in (True, False):
                promised = [
                    row.id
                    for row in self.runbook_rows
                    if row.rollout_id == rollout_id
                    and row.payload.get("traffic_on_stable") is on_stable
                ]
                assert len(promised) <= 1, (
                    f"{len(promised)} runbooks promised for the "
                    f"{'confirmed' if on_stable else 'failed'} shift of {rollout_id}"
                )

    def event_log_is_append_only_and_ordered(self) -> None:
        """Rule 7: what was logged stays as it was, and events committed later have
        higher ids (``status --watch`` follows the log by id)."""
        seen = self.model.seen_events
        now = {e.id: (e.rollout_id, e.kind, e.at, e.message, e.data) for e in self.events}
        for event_id, before in seen.items():
            assert now.get(event_id) == before, f"event {event_id} changed or vanished"
        newest_seen = max(seen, default=0)
        fresh = [event_id for event_id in now if event_id not in seen]
        assert all(event_id > newest_seen for event_id in fresh), (
            f"events {sorted(fresh)} committed after event {newest_seen} have lower ids"
        )
        seen.update(now)

    def canary_with_traffic_checked_every_interval(self) -> None:
        """Rule 10: a canary carrying traffic (running, paused, blocked, awaiting an
        approval) is due for its next check within an analysis interval. A check that
        ran late keeps the plan's grid and skips a tick less than half an interval
        ahead (``controller.check_clock``), so the bound is one and a half intervals;
        a gate's recheck interval (a minute, say) is far beyond it."""
        rollout, plan = self.current(), self.model.plan
        if rollout is None or plan is None or rollout.state not in WATCHED_STATES:
            return
        if not rollout.weight or rollout.lease_owner in self.model.dead_owners:
            return
        gap = rollout.next_check_at - self.model.world.clock()
        assert gap <= plan.analysis.interval * 3 / 2, (
            f"{rollout.state} with {rollout.weight}% on the canary, next check in {gap} "
            f"(analysis interval {plan.analysis.interval}): {rollout.reason}"
        )

    def step_promoted_on_evidence_from_its_weight(self) -> None:
        """Rule 4: a step completes only on a passing measurement taken after its
        weight was set, never on data from before the move."""
        for events in self.by_rollout.values():
            moved_at = None
            measured_after = False
            for e in events:
                if e.kind in ("weight_set", "step_started"):
                    moved_at, measured_after = e.at, False
                elif e.kind == "measurement" and moved_at is not None and e.at > moved_at:
                    measured_after = measured_after or e.data.get("verdict") == "pass"
                elif e.kind == "step_completed":
                    assert measured_after, (
                        f"{e.message}, with no measurement taken after its weight was set "
                        f"at {moved_at}"
                    )

    def leases_outlive_only_dead_workers(self) -> None:
        """Rule 2: between operations nobody alive holds a lease (each gives it back)."""
        for rollout in self.rollouts.values():
            if rollout.lease_owner is not None:
                assert rollout.lease_owner in self.model.dead_owners, (
                    f"{rollout.id} still leased to {rollout.lease_owner}, which is alive"
                )

    def current(self) -> Rollout | None:
        return self.rollouts.get(self.model.current) if self.model.current else None


# -- the rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlanOptions:
    """What varies between plans: how the release becomes stable, whether the ramp
    waits for an approval, what the policies do, a step without a hold."""

    mode: str
    gated: bool
    on_limit: str
    on_drift: str
    zero_hold: bool


def plan_options() -> st.SearchStrategy[PlanOptions]:
    return st.builds(
        PlanOptions,
        mode=st.sampled_from(["swap", "redeploy"]),
        gated=st.booleans(),
        on_limit=st.sampled_from(["pause", "rollback"]),
        on_drift=st.sampled_from(["reassert", "pause", "rollback"]),
        zero_hold=st.booleans(),
    )


def model_plan(options: PlanOptions) -> Plan:
    """A short plan (10 %, 50 %, 100 %, a few seconds each) with a version check on
    both slots, a runbook with a stable healthcheck and a disable hook."""
    traffic: dict[str, Any] = {
        "stable_server": STABLE,
        "canary_server": CANARY,
        "mode": options.mode,
        "slot_urls": {STABLE: f"http://{STABLE}", CANARY: f"http://{CANARY}"},
        "version_check": {"path": "/version"},
    }
    if options.mode == "redeploy":
        traffic.update(
            redeploy={"command": ["deploy", "{{ stable_slot }}", "{{ deploy_version }}"]},
            redeploy_settle="5s",
            redeploy_timeout="60s",
        )
    ramp: dict[str, Any] = {
        "name": "ramp",
        "kind": "ramp",
        "steps": [
            {"weight": 50, "hold": "0s" if options.zero_hold else "5s"},
            {"weight": 100, "hold": "5s"},
        ],
    }
    if options.gated:
        ramp["approval"] = ["release_manager"]
    return Plan.from_data(
        {
            "name": "model",
            "analysis": {
                "interval": "5s",
                "window": "30s",
                "inconclusive_limit": 3,
                "error_limit": 2,
                "on_limit": options.on_limit,
                "on_drift": options.on_drift,
            },
            "traffic": traffic,
            "owners": {"release_manager": ["alice"]},
            "gates": {"recheck_interval": "60s"},
            "stages": [{"name": "canary", "kind": "canary", "weight": 10, "hold": "10s"}, ramp],
            "stop_criteria": [
                {
                    "name": "errors",
                    "judge": "ratio_threshold",
                    "max_ratio": 0.05,
                    "min_requests": 10,
                    "errors": 'errors{v="{{ canary_version }}"}',
                    "total": 'total{v="{{ canary_version }}"}',
                }
            ],
            "runbook": {
                "stable_healthchecks": [{"name": "health", "url": "http://{{ stable_slot }}/"}],
                "disable_canary": {
                    "command": ["disable", "{{ canary_slot }}", "{{ canary_version }}"]
                },
            },
        }
    )


class RolloutModel(RuleBasedStateMachine):
    """The rules; ``url`` and ``engine`` are set per test (SQLite or PostgreSQL)."""

    url: str = ""
    engine: Engine | None = None

    def __init__(self) -> None:
        super().__init__()
        assert self.engine is not None
        self.model = Model(self.url, self.engine)

    @initialize(options=plan_options())
    def first_rollout(self, options: PlanOptions) -> None:
        """A plan, and the first release (2.0 over 1.0) started."""
        try:
            self.model.plan = model_plan(options)
        except ValueError:  # a plan the product refuses (a step without a hold, say)
            self.model.plan = model_plan(PlanOptions(**{**options.__dict__, "zero_hold": False}))
        self.model.start_next()

    @rule(checks=st.integers(1, 12))
    def checks_fall_due(self, checks: int) -> None:
        """The clock moves to the next check, and the worker runs it, ``checks`` times."""
        for _ in range(checks):
            self.model.run_advance()

    @rule()
    def advance_now(self) -> None:
        """An advance delivered now (a duplicate, or early): a no-op unless due."""
        self.model.run_advance(when_due=False)

    @rule(seconds=st.sampled_from([1, 5, 20, 61]))
    def clock_steps(self, seconds: int) -> None:
        self.model.world.clock.now += timedelta(seconds=seconds)

    @rule(point=st.sampled_from(["commit 1", "commit 2", "commit 3", "router set"]))
    def worker_dies_in_next_check(self, point: str) -> None:
        """The worker is killed at ``point`` of the next due check; its lease stays."""
        self.model.actors["worker"].arm(point)
        self.model.run_advance()

    @rule(point=st.sampled_from(["commit 1", "commit 2", "router set"]))
    def rollback_worker_dies(self, point: str) -> None:
        """The rollback worker is killed at ``point`` of its next rollback."""
        self.model.actors["rollback"].arm(point)
        self.model.run_rollback()

    @precondition(lambda self: self.model.dead_owners)
    @rule()
    def leases_expire(self) -> None:
        self.model.expire_dead_leases()

    @rule()
    def pause(self) -> None:
        self.model.pause()

    @rule()
    def resume(self) -> None:
        self.model.resume()

    @precondition(lambda self: self.model.plan is not None and self.model.plan.stages[-1].approval)
    @rule()
    def approve(self) -> None:
        self.model.approve()

    @rule()
    def abort(self) -> None:
        self.model.abort()

    @rule()
    def manual_rollback(self) -> None:
        self.model.manual_rollback()

    @rule()
    def alert_fires(self) -> None:
        """Alertmanager's webhook: a rollback requested, then queued, or (broker down)
        run by the API itself."""
        self.model.alert()

    @rule(up=st.booleans())
    def broker(self, up: bool) -> None:
        self.model.broker.up = up

    @precondition(lambda self: self.model.broker.up and self.model.broker.rollbacks)
    @rule()
    def rollback_worker_takes_next(self) -> None:
        self.model.run_rollback(rollout_id=self.model.broker.rollbacks.pop(0))

    @rule()
    def reconcile(self) -> None:
        self.model.reconcile()

    @precondition(lambda self: self.model.broker.up and self.model.broker.outbox)
    @rule()
    def runbook_worker_takes_next(self) -> None:
        self.model.deliver_outbox()

    @rule(when=st.sampled_from(["before", "after"]), operation=st.sampled_from(OPERATIONS))
    def while_the_worker_moves_traffic(self, when: str, operation: str) -> None:
        """``operation`` by another process lands while the worker's next due check
        moves traffic, just ``before`` or ``after`` its router applies the weight."""
        self.model.world.interleavings = [Interleaving("worker", when, operation)]
        self.model.run_advance()
        self.model.world.interleavings = []

    @rule(
        when=st.sampled_from(["before", "after"]),
        operation=st.sampled_from(DURING_A_ROLLBACK),
    )
    def while_a_rollback_moves_traffic(self, when: str, operation: str) -> None:
        """``operation`` lands while the rollback worker's next rollback (the queue's
        next, or the current rollout's) shifts traffic."""
        self.model.world.interleavings = [Interleaving("rollback", when, operation)]
        queued = self.model.broker.rollbacks
        self.model.run_rollback(rollout_id=queued.pop(0) if queued else None)
        self.model.world.interleavings = []

    @precondition(lambda self: self.model.broker.up and self.model.broker.outbox)
    @rule()
    def slow_runbook_step_while_reconcile_runs(self) -> None:
        """The next runbook's healthcheck step takes longer than the row's claim;
        meanwhile reconcile sends the row again and another worker runs it."""

        def meanwhile() -> None:
            self.model.reconcile()
            self.model.deliver_outbox("runbook2")

        self.model.world.slow_runbook = meanwhile
        self.model.deliver_outbox()
        self.model.world.slow_runbook = None

    @rule()
    def resolved_by_hand(self) -> None:
        """A person ends a ``rollback_failed`` rollout (``canary resolve``) after
        putting traffic on stable by hand: the canary at 0 % and the stable version
        back in the stable slot, as the rollback would have."""
        self.model.resolve_by_hand()

    @rule(weight=st.sampled_from([0, 30, 100]))
    def router_drift(self, weight: int) -> None:
        self.model.drift(weight)

    @rule(failures=st.integers(1, 3))
    def router_blips(self, failures: int) -> None:
        """The next ``failures`` calls to the router time out."""
        self.model.world.router_failures = failures

    @rule(down=st.booleans())
    def router_down(self, down: bool) -> None:
        """Every call to the router times out (its socket gone, a backend missing)."""
        self.model.world.router_down = down

    @rule(down=st.booleans())
    def prometheus(self, down: bool) -> None:
        self.model.world.metrics.down = down

    @rule(high=st.booleans())
    def canary_errors(self, high: bool) -> None:
        self.model.world.metrics.errors = 200.0 if high else 0.0

    @precondition(lambda self: self.model.world.deploying)
    @rule()
    def redeploy_makes_progress(self) -> None:
        self.model.world.progress()

    @rule()
    def next_release(self) -> None:
        """A start of the next version (refused while a rollout is active, or while the
        router is not as the store expects)."""
        self.model.start_next()

    @invariant()
    def promises_hold(self) -> None:
        Invariants(self.model).check_all()


# -- running it --------------------------------------------------------------------


def fake_outside_world(monkeypatch: pytest.MonkeyPatch, model_of: Callable[[], Model]) -> None:
    """Route what the product asks of the outside world to the current example's world:
    slot versions, the runbook's HTTP checks, hook commands. Replaced wherever the
    product imported them by name, so a fix that calls them from elsewhere still
    reaches the fakes. The rollback's wait for a lease is real time: made short."""
    replacements: dict[Any, Any] = {
        slots.served_version: lambda url, check: model_of().world.served_version(url, check),
        checks.run_http_check: lambda c, values, client: model_of().world.http_check(
            c, values, client
        ),
        checks.plan_client: lambda **_: nullcontext(),
    }
    for name, module in list(sys.modules.items()):
        if not (name == "controller" or name.startswith("controller.")) or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            for original, fake in replacements.items():
                if value is original:
                    monkeypatch.setattr(module, attribute, fake)
    fake_subprocess = SimpleNamespace(
        run=lambda argv, **_: model_of().world.run_hook(argv),
        SubprocessError=subprocess.SubprocessError,
        TimeoutExpired=subprocess.TimeoutExpired,
    )
    monkeypatch.setattr(hooks, "subprocess", fake_subprocess)
    monkeypatch.setattr(rollback_module, "LEASE_WAIT_SECONDS", 0.0)


def model_machine(url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> type[RolloutModel]:
    """The machine on this store, with the outside world faked for its examples."""
    machine = type("RolloutModelOn", (RolloutModel,), {"url": url, "engine": engine})
    instances: list[RolloutModel] = []
    original_init = machine.__init__

    def init(self: RolloutModel) -> None:
        original_init(self)
        instances.append(self)

    machine.__init__ = init  # type: ignore[method-assign]
    fake_outside_world(monkeypatch, lambda: instances[-1].model)
    return machine


def run_model(url: str, monkeypatch: pytest.MonkeyPatch, examples: int = DEFAULT_EXAMPLES) -> None:
    """Migrate the store once, then run the machine on it (each example empties it)."""
    migrate(url)
    engine = model_engine(url)
    machine = model_machine(url, engine, monkeypatch)
    print(
        "rollout model: "
        f"{os.environ.get('CANARY_MODEL_EXAMPLES', examples)} examples of up to "
        f"{os.environ.get('CANARY_MODEL_STEPS', DEFAULT_STEPS)} rules; run deeper with "
        "CANARY_MODEL_EXAMPLES=500 CANARY_MODEL_STEPS=80 (CANARY_MODEL_SEED=N for other seeds)"
    )
    test = get_state_machine_test(machine, settings=model_settings(examples))
    # Shrinking a failure of this model can take minutes: bounded (hypothesis's own
    # bound is 5 minutes), a failure is still reported with a shorter sequence.
    shrink_seconds = int(os.environ.get("CANARY_MODEL_SHRINK_SECONDS", 45))
    if hasattr(conjecture_engine, "MAX_SHRINKING_SECONDS"):
        monkeypatch.setattr(conjecture_engine, "MAX_SHRINKING_SECONDS", shrink_seconds)
    if os.environ.get("CANARY_MODEL_SEED"):
        test = seed(int(os.environ["CANARY_MODEL_SEED"]))(test)
    try:
        with quiet_logs():
            test()
    finally:
        engine.dispose()


@contextmanager
def quiet_logs() -> Iterator[None]:
    """Thousands of rollouts log a line per step: dropped, not printed (they cost
    more time than the model's checks, and a failure prints its rule sequence)."""
    previous = structlog.get_config()

    def drop(*_: Any) -> Any:
        raise structlog.DropEvent

    structlog.configure(processors=[drop])
    try:
        yield
    finally:
        structlog.configure(**previous)


def test_rollout_model_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The promises hold in every interleaving the model tries, on a SQLite store."""
    run_model(f"sqlite:///{tmp_path / 'model.db'}", monkeypatch)


# -- each promise can fail: the invariants catch a product that breaks them ----------


@pytest.fixture(scope="module")
def sabotage_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    """One migrated store for the sabotage tests (each example empties it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sabotage') / 'model.db'}"
    migrate(url)
    engine = model_engine(url)
    yield url, engine
    engine.dispose()


@pytest.fixture
def running(
    sabotage_store: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> Iterator[RolloutModel]:
    """One example by hand: a swap rollout whose first check moved 10 % to the canary."""
    url, engine = sabotage_store
    with quiet_logs():
        machine = model_machine(url, engine, monkeypatch)()
        machine.first_rollout(PlanOptions("swap", False, "pause", "reassert", False))
        machine.checks_fall_due(1)
        machine.promises_hold()
        yield machine


def _commit_event(model: Model, kind: str, data: dict[str, Any], at: Any = None) -> None:
    assert model.current is not None
    with model.observer() as session:
        repository.append_event(
            session,
            model.current,
            kind,
            actor="sabotage",
            at=at or model.world.clock(),
            message=f"{kind} written behind the product's back",
            data=data,
        )
        session.commit()


def _update_current(model: Model, **values: Any) -> None:
    with model.engine.begin() as conn:
        conn.execute(update(Rollout).where(Rollout.id == model.current).values(**values))


def _second_active_rollout(machine: RolloutModel) -> Invariants:
    # The store's one-active-rollout index refuses a second row: fed to the check.
    invariants = Invariants(machine.model)
    invariants.rollouts["r-twin"] = SimpleNamespace(id="r-twin", state="running")  # type: ignore[assignment]
    return invariants


def _router_moved_unrecorded(machine: RolloutModel) -> Invariants:
    machine.model.world.set_share(CANARY, 30)
    return Invariants(machine.model)


def _raised_after_rollback_request(machine: RolloutModel) -> Invariants:
    machine.alert_fires()  # requested and queued; the worker then raises the weight
    ModelRouter(machine.model, machine.model.actors["worker"], STABLE, CANARY).set_canary_weight(50)
    return Invariants(machine.model)


def _rolled_back_onto_the_new_version(machine: RolloutModel) -> Invariants:
    machine.abort()
    machine.rollback_worker_takes_next()
    machine.model.world.serves[STABLE] = "2.0"
    return Invariants(machine.model)


def _decision_without_request(machine: RolloutModel) -> Invariants:
    _commit_event(machine.model, "decision", {"decision": "rollback"})
    return Invariants(machine.model)


def _runbook_step_twice(machine: RolloutModel) -> Invariants:
    for step in (1, 2, 2):
        _commit_event(machine.model, "runbook", {"step": step, "ok": True})
    return Invariants(machine.model)


def _two_runbooks_promised(machine: RolloutModel) -> Invariants:
    model = machine.model
    with model.observer() as session:
        for _ in range(2):
            repository.add_outbox(
                session,
                model.current or "",
                "runbook",
                {"traffic_on_stable": False},
                model.world.clock(),
                timedelta(minutes=15),
            )
        session.commit()
    return Invariants(machine.model)


def _history_rewritten(machine: RolloutModel) -> Invariants:
    with machine.model.engine.begin() as conn:
        conn.execute(update(Event).where(Event.kind == "started").values(message="rewritten"))
    return Invariants(machine.model)


def _check_put_off(machine: RolloutModel) -> Invariants:
    _update_current(machine.model, next_check_at=machine.model.world.clock() + timedelta(hours=1))
    return Invariants(machine.model)


def _promoted_on_old_data(machine: RolloutModel) -> Invariants:
    later = machine.model.world.clock() + timedelta(seconds=30)
    _commit_event(machine.model, "weight_set", {"weight": 50}, at=later)
    _commit_event(machine.model, "step_completed", {"weight": 50}, at=later)
    return Invariants(machine.model)


def _lease_kept_by_the_living(machine: RolloutModel) -> Invariants:
    _update_current(machine.model, lease_owner=machine.model.actors["worker"].owner)
    return Invariants(machine.model)


# invariant -> (the sabotage, what its failure says)
SABOTAGE: dict[str, tuple[Callable[[RolloutModel], Invariants], str]] = {
    "one_active_rollout_per_service": (_second_active_rollout, "two active rollouts"),
    "record_matches_router": (_router_moved_unrecorded, "records 10%, the router gives"),
    "no_weight_raised_after_a_rollback_request": (
        _raised_after_rollback_request,
        "raised the canary 10% -> 50% while the rollout was rolling_back",
    ),
    "finished_means_traffic_where_promised": (
        _rolled_back_onto_the_new_version,
        "answers 2.0, not the stable version 1.0",
    ),
    "rollback_decision_committed_with_its_request": (
        _decision_without_request,
        "still running with no rollback requested",
    ),
    "runbook_steps_run_once": (_runbook_step_twice, r"logged steps \[1, 2, 2\]"),
    "one_runbook_per_rollback": (_two_runbooks_promised, "2 runbooks promised"),
    "event_log_is_append_only_and_ordered": (_history_rewritten, "changed or vanished"),
    "canary_with_traffic_checked_every_interval": (_check_put_off, "next check in 1:00:00"),
    "step_promoted_on_evidence_from_its_weight": (
        _promoted_on_old_data,
        "no measurement taken after its weight was set",
    ),
    "leases_outlive_only_dead_workers": (_lease_kept_by_the_living, "which is alive"),
}


def test_every_invariant_is_sabotaged_here() -> None:
    checked = {name for name in vars(Invariants) if not name.startswith("_")}
    assert checked - {"check_all", "current"} == set(SABOTAGE)


@pytest.mark.parametrize("invariant", sorted(SABOTAGE))
def test_each_invariant_fails_when_its_promise_is_broken(
    running: RolloutModel, invariant: str
) -> None:
    """A model that cannot fail proves nothing: each promise is broken behind the
    product's back (what a bug would do), and its invariant says so, while the same
    state before the sabotage passes every check."""
    sabotage, says = SABOTAGE[invariant]
    invariants = sabotage(running)
    with pytest.raises(AssertionError, match=says):
        getattr(invariants, invariant)()


# -- what the model found by itself, kept as examples ---------------------------------

SWAP = PlanOptions("swap", gated=False, on_limit="pause", on_drift="reassert", zero_hold=False)
Rules = list[tuple[str, dict[str, Any]]]
# Issue 28's cases, each as the model shrank it on the code before their fixes (where
# every one of these broke a promise); the rule sequences are the printed ones.
FOUND: dict[str, tuple[PlanOptions, Rules]] = {
    "1 rollback after the redeploy hook ran": (
        PlanOptions("redeploy", False, "pause", "reassert", False),
        [("advance_now", {})] * 3
        + [
            ("while_the_worker_moves_traffic", {"operation": "alert", "when": "before"}),
            ("checks_fall_due", {"checks": 5}),
            ("alert_fires", {}),
            ("redeploy_makes_progress", {}),
            ("rollback_worker_takes_next", {}),
        ],
    ),
    "2 an API rollback lost to an advance in flight": (
        SWAP,
        [("while_the_worker_moves_traffic", {"operation": "alert", "when": "before"})],
    ),
    "3 a decided rollback lost between two commits": (
        SWAP,
        [
            ("canary_errors", {"high": True}),
            ("worker_dies_in_next_check", {"point": "commit 2"}),
        ],
    ),
    "4 a canary awaiting approval checked every recheck_interval": (
        PlanOptions("swap", gated=True, on_limit="pause", on_drift="reassert", zero_hold=False),
        [("checks_fall_due", {"checks": 4})],
    ),
    "5 a runbook longer than its claim run twice": (
        SWAP,
        [
            ("abort", {}),
            ("rollback_worker_takes_next", {}),
            ("slow_runbook_step_while_reconcile_runs", {}),
        ],
    ),
    "8 two deliveries of one rollback both the first attempt": (
        SWAP,
        [
            ("abort", {}),
            ("router_down", {"down": True}),
            (
                "while_a_rollback_moves_traffic",
                {"operation": "second rollback delivery", "when": "before"},
            ),
        ],
    ),
    "11 a step without a hold promoted on data from before its move": (
        PlanOptions("swap", gated=False, on_limit="pause", on_drift="reassert", zero_hold=True),
        [("checks_fall_due", {"checks": 4})],
    ),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_what_the_model_found_stays_fixed(
    sabotage_store: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The sequences the model found the §1 cases with, replayed rule by rule with
    every promise checked after each: the search need not find them again by luck."""
    url, engine = sabotage_store
    options, rules = FOUND[case]
    with quiet_logs():
        machine = model_machine(url, engine, monkeypatch)()
        machine.first_rollout(options)
        machine.promises_hold()
        for name, arguments in rules:
            getattr(machine, name)(**arguments)
            machine.promises_hold()
