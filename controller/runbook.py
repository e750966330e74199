"""The rollback runbook after traffic is back on stable (seed plan §3.2, steps 2–5).

1. shift traffic to stable — done by ``controller.rollback`` before this runs;
2. confirm stable's healthchecks;
3. validate core journeys (the plan's smoke checks, against stable);
4. disable the canary's artifacts (a command or an HTTP call from the plan);
5. open an incident with the trigger, the timeline and a metrics snapshot, and post
   it to the incident webhook.

Every step is recorded as an event with its start and end. A step that fails is
recorded and the next one still runs; nothing here can move traffic back.
Immediately before each step the runbook asks whether it is still about the present
(``why_stop``: the outbox checks the rollout and the row's expiry); if not, that step
and the rest are recorded as skipped with the reason, and nothing more is done.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.analysis.runner import measure_all
from controller.checks import run_checks
from controller.hooks import run_hook
from controller.plan import CanaryDisable, Plan
from controller.redaction import redact
from controller.runtime import Runtime
from controller.slots import rollout_values
from controller.store import repository
from controller.store.models import Incident, Rollout
from controller.stored_plans import plan_of
from controller.views import event_view

log = structlog.get_logger(__name__)

ACTOR = "runbook"


@dataclass
class StepResult:
    number: int
    name: str
    ok: bool
    detail: str
    started_at: datetime
    finished_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


def disable_canary(hook: CanaryDisable | None, values: dict[str, str]) -> tuple[bool, str]:
    """Run the plan's disable hook (scale the canary to zero, say)."""
    if hook is None:
        return True, "no disable_canary hook in the plan"
    return run_hook(hook, values)


def metrics_snapshot(
    runtime: Runtime, plan: Plan, values: dict[str, str], now: datetime
) -> list[dict[str, Any]]:
    """Each stop criterion measured over the window ending at ``now``: queries, values,
    limits, verdicts (measured concurrently: a slow Prometheus must not hold the
    incident back by the sum of every query's timeout)."""
    measured = measure_all(plan.stop_criteria, runtime.metrics, values, plan.analysis.window, now)
    return [{**m.as_event(), "at": now.isoformat()} for m in measured]


def new_incident_id() -> str:
    return "inc-" + secrets.token_hex(5)


def open_or_update_incident(
    session: Session,
    rollout: Rollout,
    *,
    now: datetime,
    severity: str,
    title: str,
    snapshot: list[dict[str, Any]],
) -> Incident:
    """One incident per rollout: the first failure opens it, later runs bring it up to date.

    What is stored is masked: the trigger and the reason come from the rollout row,
    and events written before masking existed may still quote a secret URL."""
    incident = session.scalars(select(Incident).where(Incident.rollout_id == rollout.id)).first()
    timeline = redact(
        [
            event_view(e)
            for e in repository.events_for(session, rollout.id)
            if e.kind != "measurement"
        ]
    )
    trigger = redact(
        (rollout.analysis or {}).get("trigger") or {"kind": "unknown", "reason": rollout.reason}
    )
    title, snapshot = redact(title), redact(snapshot)
    if incident is None:
        incident = Incident(
            id=new_incident_id(),
            rollout_id=rollout.id,
            opened_at=now,
            started_by=rollout.created_by,
            trigger=trigger,
            severity=severity,
            title=title,
            timeline=timeline,
            snapshot=snapshot,
        )
        session.add(incident)
    else:
        incident.severity, incident.title = severity, title
        incident.timeline, incident.snapshot = timeline, snapshot
    session.flush()
    return incident


def incident_document(incident: Incident, rollout: Rollout) -> dict[str, Any]:
    """The incident as posted to the webhook and shown by the CLI and the API, masked
    as a whole: it leaves the controller, and an incident stored before masking
    existed must not carry its secrets out."""
    return redact(
        {
            "id": incident.id,
            "rollout_id": incident.rollout_id,
            "service": rollout.service,
            "canary_version": rollout.canary_version,
            "stable_version": rollout.stable_version,
            "state": rollout.state,
            "severity": incident.severity,
            "title": incident.title,
            "opened_at": incident.opened_at.isoformat(),
            "started_by": incident.started_by,
            "trigger": incident.trigger,
            "timeline": incident.timeline,
            "metrics_snapshot": incident.snapshot,
            "webhook_status": incident.webhook_status,
        }
    )


def find_incident(session: Session, incident_or_rollout_id: str) -> dict[str, Any] | None:
    """An incident document by incident id or by its rollout's id."""
    incident = (
        session.get(Incident, incident_or_rollout_id)
        or session.scalars(
            select(Incident).where(Incident.rollout_id == incident_or_rollout_id)
        ).first()
    )
    if incident is None:
        return None
    rollout = repository.get_rollout(session, incident.rollout_id)
    assert rollout is not None
    return incident_document(incident, rollout)


def run_runbook(
    runtime: Runtime,
    rollout_id: str,
    *,
    shift_started: datetime,
    shifted_at: datetime,
    shift_detail: str,
    post: Callable[[dict[str, Any]], str],
    traffic_on_stable: bool = True,
    still_running: Callable[[], None] = lambda: None,
    why_stop: Callable[[], str | None] = lambda: None,
) -> list[StepResult]:
    """Steps 2–5 (and the record of step 1), each an event; returns what each did.
    ``still_running`` is called after each step (the outbox renews its claim);
    ``why_stop`` immediately before each step: a reason it gives stops the runbook
    there, that step and the rest recorded as skipped (``not_run``) with it."""
    results: list[StepResult] = []
    with runtime.sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        assert rollout is not None
        plan = plan_of(rollout)
        values = rollout_values(plan, rollout)

        def record(
            number: int,
            name: str,
            started: datetime,
            ok: bool,
            detail: str,
            data: dict[str, Any] | None = None,
            skipped: bool = False,
        ) -> None:
            finished = runtime.clock()
            data = {**(data or {}), **({"skipped": True} if skipped else {})}
            verdict = "skipped" if skipped else "ok" if ok else "FAILED"
            result = StepResult(number, name, ok, detail, started, finished, data or {})
            results.append(result)
            repository.append_event(
                session,
                rollout_id,
                "runbook",
                actor=ACTOR,
                at=finished,
                message=f"step {number}/5 {name}: {verdict}: {detail}",
                data={
                    "step": number,
                    "name": name,
                    "ok": ok,
                    "detail": detail,
                    "started_at": started.isoformat(),
                    "finished_at": finished.isoformat(),
                    **(data or {}),
                },
                step_index=rollout.step_index,
            )
            session.commit()
            still_running()
            (log.info if ok else log.error)(
                "runbook_step", rollout_id=rollout_id, step=number, name=name, ok=ok, detail=detail
            )

        results.append(
            StepResult(
                1,
                "shift traffic to stable",
                traffic_on_stable,
                shift_detail,
                shift_started,
                shifted_at,
            )
        )
        repository.append_event(
            session,
            rollout_id,
            "runbook",
            actor=ACTOR,
            at=shifted_at,
            message=f"step 1/5 shift traffic to stable: "
            f"{'ok' if traffic_on_stable else 'FAILED'}: {shift_detail}",
            data={
                "step": 1,
                "name": "shift traffic to stable",
                "ok": traffic_on_stable,
                "detail": shift_detail,
                "started_at": shift_started.isoformat(),
                "finished_at": shifted_at.isoformat(),
            },
            step_index=rollout.step_index,
        )
        session.commit()

        def halted(remaining: list[tuple[int, str]]) -> bool:
            """Asked immediately before a step: if the runbook is no longer about the
            present (a newer rollout of the service started while the last step ran,
            say), the step and the rest are recorded as not run, with why."""
            reason = why_stop()
            if reason is None:
                return False
            log.warning(
                "runbook_stopped", rollout_id=rollout_id, step=remaining[0][0], reason=reason
            )
            for number, name in remaining:
                detail, data = f"not run: {reason}", {"not_run": reason}
                record(number, name, runtime.clock(), True, detail, data, skipped=True)
            return True

        incident_step = (5, "open incident")
        if traffic_on_stable:
            steps: list[tuple[int, str, Any, Callable[[], tuple[bool, str]]]] = [
                (
                    2,
                    "confirm stable healthchecks",
                    plan.runbook.stable_healthchecks,
                    lambda: run_checks(plan.runbook.stable_healthchecks, values),
                ),
                (
                    3,
                    "validate core journeys",
                    plan.runbook.smoke_checks,
                    lambda: run_checks(plan.runbook.smoke_checks, values),
                ),
                (
                    4,
                    "disable canary artifacts",
                    plan.runbook.disable_canary,
                    lambda: disable_canary(plan.runbook.disable_canary, values),
                ),
            ]
            for index, (number, name, configured, action) in enumerate(steps):
                later = [(n, step_name) for n, step_name, _, _ in steps[index:]]
                if halted([*later, incident_step]):
                    return results
                started = runtime.clock()
                if not configured:
                    record(number, name, started, True, "nothing in the plan", skipped=True)
                    continue
                try:
                    ok, detail = action()
                except Exception as exc:  # one broken step must not stop the others
                    log.exception("runbook_step_crashed", rollout_id=rollout_id, step=number)
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                record(number, name, started, ok, detail)

        if halted([incident_step]):
            return results
        started = runtime.clock()
        # The snapshot shows the windows that led to the decision, not the quiet after it.
        trigger_at = (rollout.analysis or {}).get("trigger", {}).get("at")
        measured_at = datetime.fromisoformat(trigger_at) if trigger_at else shift_started
        snapshot = metrics_snapshot(runtime, plan, values, measured_at)
        failed = not traffic_on_stable
        incident = open_or_update_incident(
            session,
            rollout,
            now=started,
            severity="critical" if failed else "major",
            title=(
                f"ROLLBACK FAILED: {rollout.service} {rollout.canary_version} still takes traffic"
                if failed
                else f"{rollout.service} {rollout.canary_version} rolled back to "
                f"{rollout.stable_version}"
            ),
            snapshot=snapshot,
        )
        session.commit()
        incident.webhook_status = post(incident_document(incident, rollout))
        session.commit()
        record(
            *incident_step,
            started,
            not incident.webhook_status.startswith("failed"),
            f"incident {incident.id} ({incident.webhook_status})",
            {"incident_id": incident.id},
        )
    return results
