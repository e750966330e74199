"""One reconcile tick: hand out the work that is due, each piece on its own.

Beat fires ``rollout.reconcile`` every few seconds; the task (``tasks.rollout``)
passes the Celery side in as callables (``Senders``), so this module never imports
Celery and its tests use fakes. A tick takes from the store the rollbacks due (each
held ``ROLLBACK_HOLD`` so that other ticks do not send it again meanwhile), the
advances due (each marked dispatched) and the outbox rows due, and sends each.

One piece failing (a Redis blip on one message, a rollout whose stored plan no
longer loads) is logged with its rollout's id and costs the others nothing: every
other rollback, advance and outbox row still goes out in the same tick. What could
not be sent is due again at the next tick, not after the hold or redispatch delay
meant for a message that did reach the broker. Rollbacks go first (rule 5: rollback
beats everything).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from controller import outbox, timeouts
from controller.due_batches import group_due
from controller.runtime import Runtime
from controller.store import heartbeats, repository
from controller.store.repository import DueAdvance

log = structlog.get_logger(__name__)

# A queued advance not picked up by then is presumed lost (a broker restart) and
# queued again; the message itself expires then, so a late duplicate is dropped.
ADVANCE_REDISPATCH = timedelta(seconds=20)
ROLLBACK_HOLD = timedelta(seconds=30)  # a dispatched rollback is not dispatched again before

# Each rollout's service and stage label, for a task's arguments (what Flower shows).
Labels = Mapping[str, tuple[str, str]]


@dataclass(frozen=True)
class Senders:
    """How a tick puts work on the broker: in workers, Celery tasks; in tests, fakes.
    Each raises when its message did not reach the broker."""

    rollback: Callable[[str], None]
    # One task checking a batch of rollouts due together.
    advances: Callable[[Sequence[DueAdvance], Labels], None]
    outbox: Callable[[int, str, str], object]
    # The label of a rollout's step (it loads the rollout's stored plan).
    stage_label: Callable[[str, int], str]


@dataclass(frozen=True)
class TickReport:
    """What a tick handed out, and what it could not."""

    advances: int
    batches: int
    rollbacks: int
    outbox_rows: int
    failed: tuple[str, ...] = ()

    def sentence(self) -> str:
        sentence = (
            f"dispatched {self.advances} advance(s) in {self.batches} task(s), "
            f"{self.rollbacks} rollback(s), {self.outbox_rows} outbox row(s)"
        )
        if self.failed:
            sentence += f"; not sent, due again at the next tick: {', '.join(self.failed)}"
        return sentence


def reconcile(
    runtime: Runtime, senders: Senders, *, lookahead: timedelta, batch_size: int
) -> TickReport:
    """Hand out everything due now (advances due within ``lookahead`` too, to start
    at their due time), in batches of at most ``batch_size`` advances; first note in
    the store that reconcile ran, which is how ``canary status`` and ``/metrics``
    tell a quiet system from one where nothing consumes the reconcile queue."""
    now = runtime.clock()
    with runtime.sessions() as session:
        heartbeats.record(session, heartbeats.RECONCILE, now, runtime.owner)
        session.commit()
        advances = repository.take_due_advances(
            session, now, ADVANCE_REDISPATCH, lookahead=lookahead
        )
        rollbacks = repository.take_due_rollbacks(session, now, hold=ROLLBACK_HOLD)
    sent_rollbacks = _send_rollbacks(runtime, senders.rollback, rollbacks, now)
    batches, sent_advances = _send_advances(runtime, senders, advances, now, batch_size)
    rows = outbox.dispatch_due(runtime, senders.outbox)
    failed = [f"rollback {r}" for r in rollbacks if r not in sent_rollbacks]
    failed += [f"advance {d.rollout_id}" for d in advances if d.rollout_id not in sent_advances]
    return TickReport(
        advances=len(sent_advances),
        batches=batches,
        rollbacks=len(sent_rollbacks),
        outbox_rows=len(rows),
        failed=tuple(failed),
    )


def _send_rollbacks(
    runtime: Runtime, send: Callable[[str], None], rollout_ids: Sequence[str], now: datetime
) -> set[str]:
    """Send each rollback; the ids sent. One not sent is due again at once (its hold
    released), also when the task runs out of time before reaching it."""
    sent: set[str] = set()
    try:
        for rollout_id in rollout_ids:
            if _sent("rollback", [rollout_id], send, rollout_id):
                sent.add(rollout_id)
    finally:
        unsent = [rollout_id for rollout_id in rollout_ids if rollout_id not in sent]
        if unsent:
            with runtime.sessions() as session:
                repository.release_rollback_holds(
                    session, unsent, held_until=now + ROLLBACK_HOLD, due_at=now
                )
    return sent


def _send_advances(
    runtime: Runtime,
    senders: Senders,
    advances: Sequence[DueAdvance],
    marked_at: datetime,
    batch_size: int,
) -> tuple[int, set[str]]:
    """Send the advances in batches; how many batches went out, and the rollouts in
    them. A batch not sent is unmarked, so the next tick takes its rollouts again."""
    labels = {due.rollout_id: (due.service, _stage(senders, due)) for due in advances}
    batches = group_due(advances, batch_size)
    sent: set[str] = set()
    sent_batches = 0
    try:
        for batch in batches:
            ids = [due.rollout_id for due in batch]
            if _sent("advance", ids, senders.advances, batch, labels):
                sent.update(ids)
                sent_batches += 1
    finally:
        unsent = [due.rollout_id for due in advances if due.rollout_id not in sent]
        if unsent:
            with runtime.sessions() as session:
                repository.unmark_advances_dispatched(session, unsent, marked_at)
    return sent_batches, sent


def _stage(senders: Senders, due: DueAdvance) -> str:
    """The stage label of a due rollout, or "" when it cannot be had (its stored plan
    does not load): a label is for Flower, and its advance must go out anyway, to
    record what is wrong with the rollout where on-call will see it."""
    try:
        return senders.stage_label(due.rollout_id, due.step_index)
    except timeouts.out_of_time():
        raise
    except Exception as exc:
        log.error("stage_label_failed", rollout_id=due.rollout_id, error=_error(exc))
        return ""


def _sent(what: str, rollout_ids: list[str], send: Callable[..., object], *args: object) -> bool:
    """``send(*args)``; False, and an error line naming the rollouts, if it raised.
    The task running out of time is not a failed send: it stops the tick."""
    try:
        send(*args)
    except timeouts.out_of_time():
        raise
    except Exception as exc:
        if len(rollout_ids) == 1:
            log.error(f"{what}_enqueue_failed", rollout_id=rollout_ids[0], error=_error(exc))
        else:
            log.error(f"{what}_enqueue_failed", rollout_ids=rollout_ids, error=_error(exc))
        return False
    return True


def _error(exc: Exception) -> str:
    """An exception as a log field; the log's redactor masks any secret in it."""
    return f"{type(exc).__name__}: {exc}"
