"""Lifecycle notifications of a rollout, built from the store and recorded in it."""

from __future__ import annotations

from controller.notifications import LifecycleEvent, notify
from controller.runtime import Runtime
from controller.store import repository
from controller.stored_plans import plan_of
from controller.views import rollout_summary


def send_notifications(runtime: Runtime, rollout_id: str, kind: str) -> str:
    """Send ``kind`` to the plan's targets; record each outcome as an event."""
    with runtime.sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        if rollout is None:
            return f"{rollout_id}: no such rollout"
        plan = plan_of(rollout)
        if not plan.notifications:
            return f"{rollout_id}: no notification targets in the plan"
        summary = rollout_summary(rollout)
        event = LifecycleEvent(
            kind=kind,
            rollout_id=rollout.id,
            service=rollout.service,
            version=rollout.canary_version,
            stable=rollout.stable_version,
            state=rollout.state,
            stage=summary["stage"],
            weight=rollout.weight,
            reason=rollout.reason,
            at=runtime.clock(),
        )
        outcomes = notify(plan.notifications, event)
        if not outcomes:
            return f"{rollout_id}: no target wants {kind}"
        repository.append_event(
            session,
            rollout_id,
            "notification",
            actor="notifier",
            at=runtime.clock(),
            message=f"{kind}: "
            + "; ".join(f"{o.target} {'ok' if o.ok else 'FAILED'} ({o.detail})" for o in outcomes),
            data={
                "kind": kind,
                "outcomes": [
                    {"target": o.target, "ok": o.ok, "detail": o.detail} for o in outcomes
                ],
            },
            step_index=rollout.step_index,
        )
        session.commit()
    return f"{rollout_id} {kind}: " + ", ".join(
        f"{o.target} {'ok' if o.ok else 'failed'}" for o in outcomes
    )
