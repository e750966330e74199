"""Thin Celery tasks named by intent. Each carries the rollout id, service and stage
in its arguments (so Flower shows what it is about) and returns a sentence of state
(so Flower shows what happened); the store keeps the full record."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache

import structlog
from structlog.contextvars import bound_contextvars

from config.settings import get_settings
from controller.engine import advance
from controller.lifecycle import send_notifications
from controller.rollback import rollback
from controller.runtime import Runtime, run_runbook_now
from controller.store import repository
from controller.views import rollout_summary
from tasks.app import app

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """One runtime per worker process: pooled DB connections, one Prometheus client."""
    rt = Runtime.from_settings(get_settings())
    rt.enqueue_rollback = lambda rollout_id: enqueue_rollback(rollout_id)
    rt.notify = enqueue_notify
    rt.run_runbook = enqueue_runbook
    return rt


def describe(rollout_id: str) -> dict[str, str]:
    """The arguments that make a task readable in Flower: id, service, stage."""
    with runtime().sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        if rollout is None:
            return {"rollout_id": rollout_id, "service": "", "stage": ""}
        summary = rollout_summary(rollout)
    return {"rollout_id": rollout_id, "service": summary["service"], "stage": summary["stage"]}


def enqueue_rollback(rollout_id: str, reason: str = "") -> None:
    rollback_task.apply_async(kwargs={**describe(rollout_id), "reason": reason})


def enqueue_notify(rollout_id: str, kind: str) -> None:
    """Queue a lifecycle notification on the work queue; never raises."""
    try:
        notify_task.apply_async(kwargs={**describe(rollout_id), "kind": kind}, expires=300)
    except Exception as exc:  # a notification must never break a step
        log.warning(
            "notify_enqueue_failed", rollout_id=rollout_id, kind=kind, error=type(exc).__name__
        )


def enqueue_runbook(rollout_id: str, shift: dict) -> None:
    runbook_task.apply_async(kwargs={**describe(rollout_id), "shift": shift})


def enqueue_start(rollout_id: str) -> None:
    start_task.apply_async(kwargs=describe(rollout_id))


@app.task(name="rollout.reconcile", ignore_result=True)
def reconcile_task() -> str:
    """Hand out due work: one advance per due rollout, one rollback per pending rollback."""
    rt = runtime()
    with rt.sessions() as session:
        now = rt.clock()
        advances = repository.due_for_advance(session, now)
        rollbacks = repository.take_due_rollbacks(session, now, hold=timedelta(seconds=30))
    for rollout_id in rollbacks:
        enqueue_rollback(rollout_id, "pending rollback")
    for rollout_id in advances:
        advance_task.apply_async(kwargs=describe(rollout_id), expires=60)
    return f"dispatched {len(advances)} advance(s) and {len(rollbacks)} rollback(s)"


@app.task(name="rollout.start")
def start_task(rollout_id: str, service: str = "", stage: str = "") -> str:
    """The first step of a new rollout, right after it is created (beat would do it too)."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        return advance(runtime(), rollout_id).sentence()


@app.task(name="rollout.advance")
def advance_task(rollout_id: str, service: str = "", stage: str = "") -> str:
    """Do one step of one rollout (soak, canary, ramp or verify) under its lease."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        result = advance(runtime(), rollout_id)
        log.info("advance", result=result.sentence())
        return result.sentence()


@app.task(name="rollout.rollback")
def rollback_task(rollout_id: str, service: str = "", stage: str = "", reason: str = "") -> str:
    """Put all traffic back on stable and run the runbook; runs on the rollback queue."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        result = rollback(runtime(), rollout_id)
        log.info("rollback", result=result.sentence(), reason=reason)
        return result.sentence()


@app.task(name="rollout.notify")
def notify_task(rollout_id: str, kind: str, service: str = "", stage: str = "") -> str:
    """Tell people about a lifecycle change (webhooks, Slack, commands); off the
    rollback path, failures only logged and recorded."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        return send_notifications(runtime(), rollout_id, kind)


@app.task(name="rollout.runbook", time_limit=300, soft_time_limit=290)
def runbook_task(rollout_id: str, shift: dict, service: str = "", stage: str = "") -> str:
    """Rollback runbook steps 2-5 (healthchecks, journeys, disable canary, incident),
    on the work queue so that the rollback queue stays free for the next rollback."""
    with bound_contextvars(rollout_id=rollout_id, service=service, stage=stage):
        return f"{rollout_id} {run_runbook_now(runtime(), rollout_id, shift)}"
