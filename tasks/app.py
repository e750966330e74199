"""The Celery application: Redis broker, short messages, settings from ``CANARY_*``.

Long waits never live in Redis: with the Redis transport an unacknowledged message
comes back after ``visibility_timeout``, so a task that slept through a soak would
run twice. Every wait is ``next_check_at`` in the database, checked by the short
``rollout.reconcile`` task that beat fires every few seconds.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded
from kombu import Queue

from config.settings import get_settings
from controller import timeouts
from controller.logging import configure_logging

# The domain cannot import Celery; this tells its checks which exception means "the
# task ran out of time", so that none of them reports it as a failed check.
timeouts.register(SoftTimeLimitExceeded)


# Queues by urgency, each served by workers of its own so that nothing slow stands
# in front of something urgent: a rollback never waits behind analysis, and a slow
# runbook or a dead notification endpoint never delays the checks of other rollouts.
# Reconcile has a queue of its own: behind a backlog of advances every due check
# would be handed out late, and late by the length of the backlog.
QUEUES = ("rollback", "reconcile", "rollouts", "runbook", "notify")
ROUTES = {
    "rollout.rollback": "rollback",
    "rollout.reconcile": "reconcile",
    "rollout.start": "rollouts",
    "rollout.advance": "rollouts",
    "rollout.advance_batch": "rollouts",
    "rollout.runbook": "runbook",
    "rollout.notify": "notify",
}


def queue_name(kind: str) -> str:
    """The queue of ``kind`` (one of QUEUES) for this installation."""
    return f"{get_settings().queue_prefix}.{kind}"


def create_app() -> Celery:
    settings = get_settings()
    app = Celery(
        "canary",
        broker=settings.broker_url,
        backend=settings.result_backend or settings.broker_url,
        include=["tasks.rollout", "tasks.metrics"],
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_queues=tuple(Queue(queue_name(kind)) for kind in QUEUES),
        task_default_queue=queue_name("rollouts"),
        task_routes={task: {"queue": queue_name(kind)} for task, kind in ROUTES.items()},
        # Events and remote control on exchanges of this installation's own, so that
        # two controllers sharing a Redis (or two labs) never see each other's
        # workers in Flower or answer each other's inspect calls.
        event_exchange=f"{settings.queue_prefix}.events",
        control_exchange=f"{settings.queue_prefix}.control",
        task_send_sent_event=True,
        worker_send_task_events=True,
        # Nothing waits on a task's result: each returns a sentence for Flower, which
        # reads it from the task events. Keeping results would leave a Redis key per
        # advance for a day.
        task_ignore_result=True,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": 3600},
        timezone="UTC",
        beat_schedule={
            "rollout.reconcile": {
                "task": "rollout.reconcile",
                "schedule": settings.reconcile_interval_seconds,
                # A reconcile that waited longer than one interval is stale: drop it.
                "options": {"expires": settings.reconcile_interval_seconds * 2},
            },
        },
    )
    return app


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Celery's own lines go through structlog too: JSON, bound fields, no secrets."""
    configure_logging(get_settings().log_json)


app = create_app()
