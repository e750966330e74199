"""Read-only views of the store for people: ``canary status`` and the demo summary.

Everything shown here is derived from the rollout row and its event log, so what
on-call read is exactly what the controller recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from controller.durations import format_duration
from controller.plan import Plan
from controller.store import repository
from controller.store.models import Rollout


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def rollout_summary(rollout: Rollout) -> dict[str, Any]:
    steps = Plan.from_data(rollout.plan).steps()
    step = steps[min(rollout.step_index, len(steps) - 1)]
    return {
        "id": rollout.id,
        "service": rollout.service,
        "version": rollout.canary_version,
        "stable": rollout.stable_version,
        "plan": rollout.plan_name,
        "state": rollout.state,
        "stage": step.label,
        "step": f"{rollout.step_index + 1}/{len(steps)}",
        "weight": rollout.weight,
        "tripped": rollout.tripped_criterion,
        "reason": rollout.reason,
        "created_by": rollout.created_by,
        "created_at": _iso(rollout.created_at),
        "finished_at": _iso(rollout.finished_at),
        "next_check_at": _iso(rollout.next_check_at),
    }


def rollout_detail(session: Session, rollout: Rollout, event_limit: int = 20) -> dict[str, Any]:
    """Summary, the weights traffic went through, the latest verdict per criterion, and
    the most recent events."""
    events = repository.events_for(session, rollout.id)
    weights = [e.data.get("weight") for e in events if e.kind == "weight_set"]
    latest: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.kind == "measurement":
            latest[e.data["criterion"]] = {**e.data, "at": _iso(e.at)}
    steps = Plan.from_data(rollout.plan).steps()
    return {
        **rollout_summary(rollout),
        "weights": weights,
        "steps": [
            {
                "index": s.index,
                "label": s.label,
                "weight": s.weight,
                "hold": format_duration(s.hold),
            }
            for s in steps
        ],
        "criteria": latest,
        "events": [event_view(e) for e in events[-event_limit:]],
    }


def event_view(event: Any) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": _iso(event.at),
        "kind": event.kind,
        "actor": event.actor,
        "step": event.step_index,
        "message": event.message,
        "data": event.data,
    }


def weights_of(session: Session, rollout_id: str) -> list[int]:
    return [e.data["weight"] for e in repository.events_for(session, rollout_id, ["weight_set"])]
