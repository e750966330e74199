"""Enqueue work from outside the workers (the API, the CLI) without waiting for beat."""

from tasks.rollout import enqueue_outbox, enqueue_rollback, enqueue_start

__all__ = ["enqueue_outbox", "enqueue_rollback", "enqueue_start"]
