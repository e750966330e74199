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
from controller.runtime import utcnow
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


def rollout_detail(
    session: Session, rollout: Rollout, event_limit: int = 20, now: datetime | None = None
) -> dict[str, Any]:
    """Summary, each step and where the rollout stands, the time left in the hold, the
    weights traffic went through, the latest verdict per criterion, recent events."""
    events = repository.events_for(session, rollout.id)
    latest: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.kind == "measurement":
            latest[e.data["criterion"]] = {**e.data, "at": _iso(e.at)}
    completed = {e.step_index for e in events if e.kind == "step_completed"}
    gate_events = [e for e in events if e.kind in ("blocked", "gates_passed")]
    gates = gate_events[-1].data.get("checks", []) if gate_events else []
    approvals = [
        {"gate": e.data["gate"], "role": e.data["role"], "name": e.data["name"], "at": _iso(e.at)}
        for e in events
        if e.kind == "approval"
    ]
    steps = Plan.from_data(rollout.plan).steps()
    hold_left = None
    if rollout.step_started_at and rollout.state in ("running", "paused"):
        current = steps[min(rollout.step_index, len(steps) - 1)]
        remaining = rollout.step_started_at + current.hold - (now or utcnow())
        hold_left = max(0.0, remaining.total_seconds())
    return {
        **rollout_summary(rollout),
        "weights": weights_from(events),
        "hold_left_seconds": hold_left,
        "steps": [
            {
                "index": s.index,
                "label": s.label,
                "weight": s.weight,
                "hold": format_duration(s.hold),
                "status": "done"
                if s.index in completed
                else "current"
                if s.index == rollout.step_index
                else "pending",
            }
            for s in steps
        ],
        "criteria": latest,
        "gates": gates,
        "approvals": approvals,
        "events": [event_view(e) for e in events[-event_limit:]] if event_limit else [],
    }


def weights_from(events: Any) -> list[int]:
    """The canary weights traffic went through, in order, as read back from the router."""
    return [e.data["weight"] for e in events if e.kind == "weight_set"]


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
    return weights_from(repository.events_for(session, rollout_id, ["weight_set"]))
