"""Thin Celery tasks: each one calls into ``controller`` and returns a sentence of state."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache

import structlog

from config.settings import get_settings
from controller.engine import advance
from controller.rollback import rollback
from controller.runtime import Runtime
from controller.store import repository
from tasks.app import app

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """One runtime per worker process: pooled DB connections, one Prometheus client."""
    rt = Runtime.from_settings(get_settings())
    rt.enqueue_rollback = lambda rollout_id: rollback_task.apply_async((rollout_id,))
    return rt


@app.task(name="rollout.reconcile", ignore_result=True)
def reconcile_task() -> dict:
    """Hand out due work: one advance per due rollout, one rollback per pending rollback."""
    rt = runtime()
    with rt.sessions() as session:
        now = rt.clock()
        advances = repository.due_for_advance(session, now)
        rollbacks = repository.due_for_rollback(session, now)
    for rollout_id in rollbacks:
        rollback_task.apply_async((rollout_id,))
    for rollout_id in advances:
        advance_task.apply_async((rollout_id,), expires=60)
    return {"advances": list(advances), "rollbacks": list(rollbacks)}


@app.task(name="rollout.advance")
def advance_task(rollout_id: str) -> dict:
    """Do one step of one rollout (soak, canary, ramp or verify) under its lease."""
    result = advance(runtime(), rollout_id)
    log.info("advance", **asdict(result))
    return asdict(result)


@app.task(name="rollout.rollback")
def rollback_task(rollout_id: str) -> dict:
    """Put all traffic back on stable and record it; runs on the rollback queue."""
    result = rollback(runtime(), rollout_id)
    log.info("rollback", **asdict(result))
    return asdict(result)
