"""Enqueue work from outside the workers (the API, the CLI) without waiting for beat."""

from __future__ import annotations

from tasks.rollout import rollback_task


def enqueue_rollback(rollout_id: str) -> None:
    """Put a rollback straight on the rollback queue; it never waits behind analysis."""
    rollback_task.apply_async((rollout_id,))
