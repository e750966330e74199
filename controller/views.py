"""Read-only views of the store for people: ``canary status`` and the demo summary.

Everything shown here is derived from the rollout row and its event log, so what
on-call read is exactly what the controller recorded, masked again on the way out
(``controller.redaction``): a reason is stored as given, and rows written before a
masking rule existed keep what it would have masked.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from controller.clock import utcnow
from controller.durations import format_duration
from controller.reconcile.stalled import rollout_note
from controller.redaction import redact
from controller.store import repository
from controller.store.models import Rollout, RolloutState
from controller.stored_plans import plan_of


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def resolve_hint(rollout_id: str) -> str:
    """How a person ends a rollback that cannot confirm traffic on stable by itself
    (a missing backend, a router the controller may not write): said wherever such a
    rollout shows, so nobody waits for a retry that will never succeed."""
    return f"fix traffic by hand, then `canary resolve {rollout_id} --reason ...`"


def way_out(rollout_id: str, state: str) -> str | None:
    """What a person must do about a rollout that will not end by itself, or None."""
    if state == RolloutState.ROLLBACK_FAILED:
        return f"{rollout_id} is rollback_failed: {resolve_hint(rollout_id)}"
    return None


def rollout_summary(rollout: Rollout) -> dict[str, Any]:
    steps = plan_of(rollout).steps()
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
        "reason": redact(rollout.reason),
        "created_by": rollout.created_by,
        "created_at": _iso(rollout.created_at),
        "finished_at": _iso(rollout.finished_at),
        "next_check_at": _iso(rollout.next_check_at),
    }


def rollout_detail(
    session: Session,
    rollout: Rollout,
    event_limit: int = 20,
    now: datetime | None = None,
    reconcile_interval: timedelta | None = None,
) -> dict[str, Any]:
    """Summary, each step and where the rollout stands, the time left in the hold, the
    weights traffic went through, the latest verdict per criterion, recent events;
    ``stalled``, why it does not move when no reconcile has run for a while (given
    the installation's ``reconcile_interval``)."""
    return DetailFollower(rollout.id, event_limit, reconcile_interval).read(session, rollout, now)


class DetailFollower:
    """``rollout_detail`` of one rollout kept up to date from the events written since
    the last read, so following a long rollout (``status --watch``) reads a few rows
    a second, not its whole log.

    Event ids come from a sequence, and a transaction that took a lower id can commit
    after one that took a higher: each read looks ``OVERLAP`` ids back and skips the
    events it has already taken, so a late commit is not missed."""

    OVERLAP = 200

    def __init__(
        self, rollout_id: str, event_limit: int = 20, reconcile_interval: timedelta | None = None
    ) -> None:
        self.rollout_id = rollout_id
        # None: the reader does not know the installation's interval, and says nothing
        # about reconcile.
        self.reconcile_interval = reconcile_interval
        self.latest: dict[str, dict[str, Any]] = {}
        self.completed: set[int | None] = set()
        self.gates: list[Any] = []
        self.approvals: list[dict[str, Any]] = []
        self.weights: list[int] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=max(event_limit, 0))
        self.taken: set[int] = set()
        self.last_id = 0

    def read(
        self, session: Session, rollout: Rollout, now: datetime | None = None
    ) -> dict[str, Any]:
        for event in repository.events_after(session, self.rollout_id, self.last_id - self.OVERLAP):
            if event.id not in self.taken:
                self._take(event)
        self.taken = {i for i in self.taken if i > self.last_id - self.OVERLAP}
        now = now or utcnow()
        stalled = None
        if self.reconcile_interval is not None:
            stalled = rollout_note(session, rollout, now, self.reconcile_interval)
        return {**self._render(rollout, now), "stalled": stalled}

    def _take(self, e: Any) -> None:
        self.taken.add(e.id)
        self.last_id = max(self.last_id, e.id)
        if e.kind == "measurement":
            self.latest[e.data["criterion"]] = {**e.data, "at": _iso(e.at)}
        elif e.kind == "step_completed":
            self.completed.add(e.step_index)
        elif e.kind in ("blocked", "gates_passed"):
            self.gates = redact(e.data.get("checks", []))
        elif e.kind == "approval":
            self.approvals.append(
                {
                    "gate": e.data["gate"],
                    "role": e.data["role"],
                    "name": e.data["name"],
                    "at": _iso(e.at),
                }
            )
        elif e.kind == "weight_set":
            self.weights.append(e.data["weight"])
        if self.recent.maxlen:
            self.recent.append(event_view(e))

    def _render(self, rollout: Rollout, now: datetime) -> dict[str, Any]:
        steps = plan_of(rollout).steps()
        hold_left = None
        if rollout.step_started_at and rollout.state in ("running", "paused"):
            current = steps[min(rollout.step_index, len(steps) - 1)]
            remaining = rollout.step_started_at + current.hold - now
            hold_left = max(0.0, remaining.total_seconds())
        return {
            **rollout_summary(rollout),
            "action_needed": way_out(rollout.id, rollout.state),
            "weights": list(self.weights),
            "hold_left_seconds": hold_left,
            "steps": [
                {
                    "index": s.index,
                    "label": s.label,
                    "weight": s.weight,
                    "hold": format_duration(s.hold),
                    "status": "done"
                    if s.index in self.completed
                    else "current"
                    if s.index == rollout.step_index
                    else "pending",
                }
                for s in steps
            ],
            "criteria": dict(self.latest),
            "gates": self.gates,
            "approvals": list(self.approvals),
            "events": list(self.recent),
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
        "message": redact(event.message),
        "data": redact(event.data),
    }


def weights_of(session: Session, rollout_id: str) -> list[int]:
    return weights_from(repository.events_for(session, rollout_id, ["weight_set"]))
