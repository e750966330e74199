"""Work promised by a state change, done at least once: runbooks and notifications.

A rollback that settled, or a rollout that changed stage, writes an outbox row in
the same transaction as the change. The row is dispatched to the broker after the
commit, and reconcile dispatches again any row not acknowledged done, so a broker
restart or a killed worker delays the work but never loses it. Before each step,
a runbook checks that it is still about the present: its row not expired, its
rollout rolled back and not superseded by a newer rollout of the same service
(whose canary slot the old runbook's disable hook could otherwise switch off). A
newer rollout may start while a step runs, so the check is made again
immediately before every step, not once per delivery.

A delivery claims its row before it runs it, so a row sent twice runs once. A
runbook's delivery renews its claim on a heartbeat thread however long a step
takes, and records each step only while it still holds the row; a delivery that
died frees the row within one claim, and the next one resumes the runbook at the
first step not recorded (``controller.runbook``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from controller import timeouts
from controller.lifecycle import send_notifications
from controller.runbook import run_runbook_now
from controller.runtime import Runtime
from controller.store import repository
from controller.store.models import ACTIVE_STATES, ROLLBACK_STATES, Rollout, RolloutState

log = structlog.get_logger(__name__)

RUNBOOK_TTL = timedelta(minutes=15)
NOTIFY_TTL = timedelta(minutes=10)
REDISPATCH_AFTER = timedelta(seconds=60)  # a dispatched row not done by then is sent again
# How long one delivery may run a row before another may. A notification's task is
# killed 10 s before its claim lapses; a runbook's delivery renews its claim every
# third of it while it runs (``heartbeat``), so a delivery killed mid-runbook frees
# the row within one claim, not after the task's 300 s limit, and a live one keeps
# it however long a step takes.
CLAIMS = {"runbook": timedelta(seconds=120), "notify": timedelta(seconds=130)}
_RUNBOOK_STATES = (RolloutState.ROLLED_BACK, RolloutState.ABORTED, *ROLLBACK_STATES)


def claim_for(runtime: Runtime, kind: str) -> timedelta:
    """How long one delivery of a ``kind`` row holds it: a runbook's claim may be set
    (``CANARY_RUNBOOK_CLAIM_SECONDS``); a notification's stays tied to its task's
    time limit."""
    if kind == "runbook" and runtime.runbook_claim is not None:
        return runtime.runbook_claim
    return CLAIMS[kind]


def redispatch_after(runtime: Runtime) -> timedelta:
    """How long a dispatched row not done waits before it is sent again."""
    return runtime.outbox_redispatch or REDISPATCH_AFTER


def promise_runbook(session: Session, rollout: Rollout, shift: dict[str, Any], now: Any) -> int:
    """The runbook after a rollback's traffic shift, as an outbox row; its id."""
    return repository.add_outbox(session, rollout.id, "runbook", shift, now, RUNBOOK_TTL).id


def promise_notification(session: Session, rollout_id: str, kind: str, now: Any) -> int:
    """A lifecycle notification as an outbox row; its id."""
    return repository.add_outbox(session, rollout_id, "notify", {"kind": kind}, now, NOTIFY_TTL).id


def run_outbox_row(runtime: Runtime, row_id: int) -> str:
    """Do the work of one row (in whatever process delivers it) and acknowledge it. A
    row already done, or being run by another delivery, is a duplicate and does
    nothing: a runbook runs once even when its row was dispatched twice."""
    with runtime.sessions() as session:
        row = repository.get_outbox(session, row_id)
        if row is None:
            return f"outbox {row_id}: no such row"
        if row.done_at is not None:
            return f"outbox {row_id}: already done ({row.outcome})"
        kind, rollout_id, payload = row.kind, row.rollout_id, dict(row.payload)
        now, length = runtime.clock(), claim_for(runtime, kind)
        if not repository.claim_outbox(session, row_id, now, length):
            return f"outbox {row_id}: another delivery is running it"
        stale = why_not_run(session, row_id, runtime.clock())
    if stale:
        outcome = f"not run: {stale}"
        _record_skip(runtime, rollout_id, kind, outcome)
    elif kind == "runbook":
        try:
            claim = Claim(runtime, row_id, length, now + length)
            outcome = _run_runbook(runtime, claim, rollout_id, payload)
        except ClaimLost as lost:
            return f"outbox {row_id}: {lost}"
    else:
        outcome = send_notifications(runtime, rollout_id, payload["kind"])
    with runtime.sessions() as session:
        repository.finish_outbox(session, row_id, outcome, runtime.clock())
    return outcome


def _run_runbook(runtime: Runtime, claim: Claim, rollout_id: str, payload: dict[str, Any]) -> str:
    """The runbook of a claimed row, its claim renewed all the while it runs."""

    def why_stop() -> str | None:
        with runtime.sessions() as session:
            return why_not_run(session, claim.row_id, runtime.clock())

    with heartbeat(claim):
        return run_runbook_now(
            runtime,
            rollout_id,
            payload,
            outbox_id=claim.row_id,
            hold=claim.held,
            why_stop=why_stop,
        )


class ClaimLost(Exception):
    """Another delivery has taken the row: this one's claim lapsed (it stalled for a
    whole claim, its heartbeat with it). It records nothing more and leaves the row,
    and what is left of its work, to the other."""


@dataclass
class Claim:
    """One delivery's hold on an outbox row until ``until``, as it last wrote it.

    Every renewal is conditional on the row still holding that very ``until``: once
    another delivery has claimed the row, this one can neither extend the other's
    claim nor commit anything more (``held``). The heartbeat thread and the
    delivery's own writes renew it in turn, never at once (``_lock``)."""

    runtime: Runtime
    row_id: int
    length: timedelta
    until: datetime
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def renew(self) -> None:
        """Hold the row for another ``length`` from now (the heartbeat's beat)."""
        with self._lock, self.runtime.sessions() as session:
            until = self._extend(session)
            session.commit()
            self.until = until

    @contextmanager
    def held(self, session: Session) -> Iterator[None]:
        """A block that writes in ``session`` and commits, only while this delivery
        holds its row: the claim is extended in the same transaction, and
        ``ClaimLost`` raised, nothing written, once another delivery has the row."""
        with self._lock:
            until = self._extend(session)
            try:
                yield
            except BaseException:
                session.rollback()
                raise
            self.until = until

    def _extend(self, session: Session) -> datetime:
        until = max(self.until, self.runtime.clock() + self.length)
        if not repository.renew_outbox_claim(session, self.row_id, self.until, until):
            session.rollback()
            raise ClaimLost("another delivery took the row over (this one's claim lapsed)")
        return until


def heartbeat_every(length: timedelta) -> float:
    """Seconds between two renewals of a claim of ``length``: a third of it, so a
    beat or two may be late (a busy store) before the claim lapses."""
    return length.total_seconds() / 3


@contextmanager
def heartbeat(claim: Claim) -> Iterator[None]:
    """Renew ``claim`` on a daemon thread while the block runs, so that no second
    delivery takes a row whose delivery is alive however long one of its steps is.
    A delivery that dies takes its heartbeat with it: the row is free again within
    one claim of its last beat."""
    stop = threading.Event()
    beats = threading.Thread(
        target=_beat,
        args=(claim, stop, heartbeat_every(claim.length)),
        name=f"outbox-{claim.row_id}-heartbeat",
        daemon=True,
    )
    beats.start()
    try:
        yield
    finally:
        stop.set()
        beats.join(5.0)


def _beat(claim: Claim, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            claim.renew()
        except ClaimLost:
            if not stop.is_set():
                log.warning("outbox_claim_lost", outbox_id=claim.row_id)
            return
        except Exception:  # the store out of reach for a moment: the next beat tries again
            log.exception("outbox_claim_not_renewed", outbox_id=claim.row_id)


def why_not_run(session: Session, row_id: int, now: datetime) -> str | None:
    """Why the work of this row must not be done (any more), or None. A delivery asks
    when it takes the row, and a runbook again immediately before each of its steps:
    a step never acts for a rollout that has been superseded while an earlier step
    ran, nor after its row expired."""
    row = repository.get_outbox(session, row_id)
    if row is None:
        return "the outbox row is gone"
    if row.expires_at < now:
        return f"expired at {row.expires_at.isoformat()}"
    return _stale_runbook(session, row.rollout_id) if row.kind == "runbook" else None


def _stale_runbook(session: Session, rollout_id: str) -> str | None:
    """Why this runbook must not act any more, or None."""
    rollout = repository.get_rollout(session, rollout_id)
    if rollout is None:
        return "the rollout is gone"
    if rollout.state not in _RUNBOOK_STATES:
        return f"the rollout is {rollout.state}, not rolled back"
    # Another active rollout of the service is newer whatever the clocks that stamped
    # created_at say: one rollout of a service is active at a time, and this one was.
    newer = session.scalars(
        select(Rollout.id)
        .where(
            Rollout.service == rollout.service,
            Rollout.id != rollout.id,
            or_(Rollout.created_at > rollout.created_at, Rollout.state.in_(ACTIVE_STATES)),
        )
        .limit(1)
    ).first()
    if newer:
        return f"a newer rollout of {rollout.service} ({newer}) started since"
    return None


def _record_skip(runtime: Runtime, rollout_id: str, kind: str, outcome: str) -> None:
    with runtime.sessions() as session:
        if repository.get_rollout(session, rollout_id) is None:
            return
        repository.append_event(
            session,
            rollout_id,
            f"{kind}_skipped",
            actor="controller",
            at=runtime.clock(),
            message=f"{kind} {outcome}",
            data={"kind": kind, "outcome": outcome},
        )
        session.commit()


def send_row(runtime: Runtime, row_id: int, kind: str, rollout_id: str) -> object:
    """Put one row on its way: the runtime's sender (a task on the runbook or notify
    queue, in workers), or, with none, run it in this process."""
    if runtime.send_outbox is not None:
        return runtime.send_outbox(row_id, kind, rollout_id)
    return run_outbox_row(runtime, row_id)


def dispatch_due(
    runtime: Runtime, send: Callable[[int, str, str], object] | None = None
) -> list[int]:
    """Send again every outbox row that is not done (reconcile calls this); the ids
    sent. ``send`` (default ``runtime.send_outbox``) puts one row on its queue.

    Each row on its own: a row whose send fails is logged and its dispatch mark
    undone, so the next tick sends it again (after the first-dispatch grace, not
    the redispatch delay), and the rows after it still go out."""
    send = send or (lambda row_id, kind, rollout_id: send_row(runtime, row_id, kind, rollout_id))
    marked_at = runtime.clock()
    with runtime.sessions() as session:
        due = repository.take_due_outbox(session, marked_at, redispatch_after(runtime))
    sent: list[int] = []
    try:
        for row_id, kind, rollout_id in due:
            try:
                send(row_id, kind, rollout_id)
            except timeouts.out_of_time():
                raise
            except Exception as exc:
                log.error(
                    "outbox_send_failed",
                    outbox_id=row_id,
                    kind=kind,
                    rollout_id=rollout_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            sent.append(row_id)
    finally:
        # Rows not sent (failed, or not reached when the task ran out of time): due
        # again at the next tick.
        done = set(sent)
        unsent = [row_id for row_id, _, _ in due if row_id not in done]
        if unsent:
            with runtime.sessions() as session:
                repository.unmark_outbox_rows(session, unsent, marked_at)
    return sent


def dispatch_now(runtime: Runtime, rows: list[tuple[int, str, str]]) -> None:
    """Right after the commit that wrote them: mark and send each row. A failure to
    send leaves the row for reconcile, never raises into the caller."""
    for row_id, kind, rollout_id in rows:
        marked_at = runtime.clock()
        with runtime.sessions() as session:
            if not repository.mark_outbox_dispatched(session, row_id, marked_at):
                continue  # reconcile dispatched it first
        try:
            send_row(runtime, row_id, kind, rollout_id)
        except Exception:  # the row stays; reconcile sends it within the grace
            with runtime.sessions() as session:
                repository.unmark_outbox_dispatched(session, row_id, marked_at)
