"""Thin Celery tasks named by intent. Each carries the rollout id, service and stage
in its arguments (so Flower shows what it is about) and returns a sentence of state
(so Flower shows what happened); the store keeps the full record. Celery logs that
sentence and sends it in task events, so it is masked like anything else that
leaves the process (``controller.redaction``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache

import structlog
from structlog.contextvars import bound_contextvars

from config.settings import get_settings
from controller import outbox, runbook, timeouts
from controller.due_batches import Due, DueCheck, advance_due
from controller.engine import AdvanceResult, advance
from controller.reconcile.tick import ADVANCE_REDISPATCH, Senders, reconcile
from controller.redaction import redact
from controller.rollback import rollback
from controller.runtime import Runtime
from controller.store import repository
from controller.stored_plans import plan_of
from tasks.app import app
from tasks.metrics import ADVANCES

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """One runtime per worker process: pooled DB connections, one Prometheus client."""
    rt = Runtime.from_settings(get_settings())
    rt.enqueue_rollback = lambda rollout_id: enqueue_rollback(rollout_id)
    rt.send_outbox = enqueue_outbox
    return rt


def describe(rollout_id: str) -> dict[str, str]:
    """The arguments that make a task readable in Flower: id, service, stage. A stage
    that cannot be had (a stored plan that no longer loads) is left blank: a label
    must never keep a rollback or a check off the broker."""
    with runtime().sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        if rollout is None:
            return {"rollout_id": rollout_id, "service": "", "stage": ""}
        service, step_index = rollout.service, rollout.step_index
    try:
        stage = stage_label(rollout_id, step_index)
    except timeouts.out_of_time():
        raise
    except Exception as exc:
        log.error("stage_label_failed", rollout_id=rollout_id, error=f"{type(exc).__name__}: {exc}")
        stage = ""
    return {"rollout_id": rollout_id, "service": service, "stage": stage}


def stage_label(rollout_id: str, step_index: int) -> str:
    """The label of a rollout's step, for a task's arguments."""
    labels = _step_labels(rollout_id)
    return labels[min(step_index, len(labels) - 1)] if labels else ""


@lru_cache(maxsize=4096)
def _step_labels(rollout_id: str) -> tuple[str, ...]:
    """A rollout's plan is fixed when it starts: its steps are read once per process,
    not validated again for every check handed out."""
    with runtime().sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        if rollout is None:
            return ()
        return tuple(step.label for step in plan_of(rollout).steps())


def enqueue_rollback(rollout_id: str, reason: str = "") -> None:
    """Put a rollback on its queue, or raise at once: the caller (the API) shifts the
    traffic itself rather than wait for a broker that does not answer."""
    kwargs = {**describe(rollout_id), "reason": reason}
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        rollback_task.apply_async(kwargs=kwargs, connection=connection, retry=False)


def enqueue_outbox(row_id: int, kind: str, rollout_id: str) -> None:
    """Send an outbox row to its queue (runbook or notify); the row is the promise."""
    task = runbook_task if kind == "runbook" else notify_task
    task.apply_async(kwargs={**describe(rollout_id), "outbox_id": row_id})


def enqueue_start(rollout_id: str) -> None:
    start_task.apply_async(kwargs=describe(rollout_id))


@app.task(name="rollout.reconcile", ignore_result=True, send_events=False)
def reconcile_task() -> str:
    """Hand out due work, each piece once and each on its own (``controller.reconcile
    .tick``): an advance per due rollout not already queued, a rollback per pending
    rollback, and outbox rows not yet done. Sends no task events: Flower lists the
    work it hands out, not a tick every 2 s."""
    rt = runtime()
    settings = get_settings()
    # Hundreds of checks a tick at scale: the ones due together go out as one task,
    # all of them over one broker connection.
    with app.producer_or_acquire() as producer:
        senders = Senders(
            rollback=lambda rollout_id: enqueue_rollback(rollout_id, "pending rollback"),
            advances=lambda batch, labels: send_batch(batch, rt.clock(), labels, producer=producer),
            outbox=enqueue_outbox,
            stage_label=stage_label,
        )
        # Checks due before the tick after next: a tick that runs late (a busy
        # database, its own queue) still queues each check before it is due, and
        # the worker starts it at its due time (eta), not a tick late.
        report = reconcile(
            rt,
            senders,
            lookahead=2 * timedelta(seconds=settings.reconcile_interval_seconds),
            batch_size=settings.advance_batch_size,
        )
    return redact(report.sentence())


@app.task(name="rollout.start")
def start_task(rollout_id: str, service: str = "", stage: str = "") -> str:
    """The first step of a new rollout, right after it is created (beat would do it too)."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        return redact(advance(runtime(), rollout_id).sentence())


def send_batch(
    batch: Sequence[Due],
    now: datetime,
    labels: Mapping[str, tuple[str, str]],
    producer: object = None,
) -> None:
    """Queue one task checking ``batch``, to start when its first rollout is due.
    ``labels``: each rollout's service and stage, for Flower."""
    first, last = batch[0].due, batch[-1].due
    advance_batch_task.apply_async(
        kwargs={
            "rollout_ids": [check.rollout_id for check in batch],
            "dues": [check.due.isoformat() for check in batch],
            "services": [labels.get(check.rollout_id, ("", ""))[0] for check in batch],
            "stages": [labels.get(check.rollout_id, ("", ""))[1] for check in batch],
        },
        eta=first if first > now else None,
        # From its last check's due time, not from now: a batch queued ahead of its due
        # time must not expire before it may start.
        expires=max(last, now) + ADVANCE_REDISPATCH,
        producer=producer,
    )


@app.task(name="rollout.advance_batch")
def advance_batch_task(
    rollout_ids: list[str],
    dues: list[str],
    services: list[str] | None = None,
    stages: list[str] | None = None,
) -> str:
    """Check the rollouts due together, each at its due time, under its own lease
    (``controller.due_batches``); one line per rollout."""
    labels = dict(zip(rollout_ids, zip(services or [], stages or [], strict=False), strict=False))
    batch = [
        DueCheck(rollout_id, datetime.fromisoformat(due))
        for rollout_id, due in zip(rollout_ids, dues, strict=True)
    ]
    # Each check's masked sentence, kept from its log line (masking is not free).
    sentences: dict[str, str] = {}

    def advance_logged(rt: Runtime, rollout_id: str) -> AdvanceResult:
        service, stage = labels.get(rollout_id, ("", ""))
        with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
            result = advance(rt, rollout_id)
            sentences[rollout_id] = _advanced(result)
            return result

    def hand_off(left: list[Due]) -> None:
        send_batch(left, runtime().clock(), labels)

    results = advance_due(runtime(), batch, hand_off, advance_one=advance_logged)
    # In due order, with a line for a check that failed with an error too.
    return "\n".join(
        sentences.get(result.rollout_id) or redact(result.sentence()) for result in results
    )


@app.task(name="rollout.advance")
def advance_task(rollout_id: str, service: str = "", stage: str = "") -> str:
    """Do one step of one rollout (soak, canary, ramp or verify) under its lease. A
    single check by name; reconcile hands checks out in batches."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        return _advanced(advance(runtime(), rollout_id))


def _advanced(result: AdvanceResult) -> str:
    """Count and log one check's outcome; its sentence, masked."""
    ADVANCES.labels(acted=str(result.acted).lower()).inc()
    sentence = redact(result.sentence())
    log.info("advance", result=sentence)
    return sentence


@app.task(name="rollout.rollback")
def rollback_task(rollout_id: str, service: str = "", stage: str = "", reason: str = "") -> str:
    """Put all traffic back on stable; runs on the rollback queue. The runbook and the
    notification it promises go to their own queues."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        sentence = redact(rollback(runtime(), rollout_id).sentence())
        log.info("rollback", result=sentence, reason=reason)
        return sentence


@app.task(
    name="rollout.notify",
    time_limit=outbox.CLAIMS["notify"].total_seconds() - 10,
    soft_time_limit=outbox.CLAIMS["notify"].total_seconds() - 20,
)
def notify_task(outbox_id: int, rollout_id: str, service: str = "", stage: str = "") -> str:
    """Tell people about a lifecycle change (webhooks, Slack, commands); off the
    rollback path, failures only logged and recorded."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        return redact(f"{rollout_id} {outbox.run_outbox_row(runtime(), outbox_id)}")


@app.task(
    name="rollout.runbook",
    time_limit=runbook.TIME_LIMIT_SECONDS,
    soft_time_limit=runbook.TIME_LIMIT_SECONDS - 10,
)
def runbook_task(outbox_id: int, rollout_id: str, service: str = "", stage: str = "") -> str:
    """Rollback runbook steps 2-5 (healthchecks, journeys, disable canary, incident),
    on a queue of their own so that the rollback queue stays free for the next
    rollback and the checks of other rollouts never wait behind a runbook. Each step
    is bounded, so a whole runbook ends well inside the time limit
    (``controller.runbook.longest_seconds``)."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        return redact(f"{rollout_id} {outbox.run_outbox_row(runtime(), outbox_id)}")
