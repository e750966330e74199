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

A runbook runs once. Each step has a time budget: the HTTP checks of step 2, and
those of step 3, share ``CHECKS_BUDGET`` (30 s) however many there are; the disable
hook has its own timeout (at most 2 min); the incident's metrics snapshot and post
``SNAPSHOT_BUDGET`` and ``POST_BUDGET`` (10 s and 20 s). A step still running
``OVERRUN_GRACE`` (5 s) past its budget is recorded FAILED with why, and the next
one runs: a whole runbook takes at most 235 s (``longest_seconds``), inside the
runbook task's soft time limit (290 s). The outbox's delivery holds its row while
it runs (a heartbeat renews its claim), and every step's event names the row: a
delivery that died is resumed by the next one at the first step not recorded, so
no step (the first one's record included) is done twice and the incident is opened
and posted once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller import timeouts
from controller.analysis.runner import measure_all
from controller.background import Overrun, within
from controller.checks import run_checks
from controller.hooks import hook_seconds, run_hook
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
STEP_NAMES = {
    1: "shift traffic to stable",
    2: "confirm stable healthchecks",
    3: "validate core journeys",
    4: "disable canary artifacts",
    5: "open incident",
}
# Time budgets of the steps (see the module's docstring); the hook's is its timeout.
CHECKS_BUDGET = timedelta(seconds=30)  # step 2's checks together, and step 3's
SNAPSHOT_BUDGET = timedelta(seconds=10)  # step 5: each stop criterion measured at once
POST_BUDGET = timedelta(seconds=20)  # step 5: three tries of 5 s and their backoff
OVERRUN_GRACE = timedelta(seconds=5)  # waited past a budget before a step is given up
# The runbook task's hard time limit (tasks.rollout); its soft limit is 10 s earlier.
TIME_LIMIT_SECONDS = 300

# Where a delivery records a step: committed only while it holds its outbox row.
Hold = Callable[[Session], AbstractContextManager[object]]


def _unfenced(_session: Session) -> AbstractContextManager[object]:
    """A runbook run without an outbox row (tests, by hand) holds nothing."""
    return nullcontext()


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
    why_stop: Callable[[], str | None] = lambda: None,
    outbox_id: int | None = None,
    hold: Hold | None = None,
) -> list[StepResult]:
    """Steps 2–5 (and the record of step 1), each an event; returns what this call
    recorded.

    ``outbox_id``: the outbox row this run delivers. Each step's event names it, and
    a step already recorded for the row (by a delivery that died) is not run again:
    the run continues with the next one. ``hold(session)``: the block in which each
    step is recorded, committed only while this delivery still holds its row
    (``controller.outbox``). ``why_stop``: asked immediately before each step; a
    reason it gives stops the runbook there, that step and the rest recorded as
    skipped (``not_run``) with it. Each step is bounded (``step_budgets``)."""
    with runtime.sessions() as session:
        run = _Run.begin(runtime, session, rollout_id, outbox_id, hold or _unfenced)
        if 1 not in run.done:
            run.record(1, shift_started, traffic_on_stable, shift_detail, finished=shifted_at)
        steps = _steps(run.plan, run.values) if traffic_on_stable else []
        for index, step in enumerate(steps):
            if step.number in run.done:
                continue
            if run.halted([s.number for s in steps[index:]] + [5], why_stop):
                return run.results
            run.do(step)
        if 5 not in run.done and not run.halted([5], why_stop):
            _open_incident(run, post, shift_started, failed=not traffic_on_stable)
    return run.results


@dataclass
class _Run:
    """One delivery's run of a rollout's runbook: what it runs against and what it
    has recorded, with the steps recorded for its outbox row before it began."""

    runtime: Runtime
    session: Session
    rollout: Rollout
    plan: Plan
    values: dict[str, str]
    outbox_id: int | None
    hold: Hold
    done: set[int]
    results: list[StepResult] = field(default_factory=list)

    @classmethod
    def begin(
        cls,
        runtime: Runtime,
        session: Session,
        rollout_id: str,
        outbox_id: int | None,
        hold: Hold,
    ) -> _Run:
        rollout = repository.get_rollout(session, rollout_id)
        assert rollout is not None
        plan = plan_of(rollout)
        done = recorded_steps(session, rollout_id, outbox_id)
        if done:
            log.info("runbook_resumed", rollout_id=rollout_id, outbox_id=outbox_id, done=done)
        values = rollout_values(plan, rollout)
        return cls(runtime, session, rollout, plan, values, outbox_id, hold, done)

    def do(self, step: _Step) -> None:
        """Run one step within its budget and record how it went."""
        started = self.runtime.clock()
        if not step.configured:
            self.record(step.number, started, True, "nothing in the plan", skipped=True)
            return
        ok, detail = _bounded(step, self.rollout.id)
        self.record(step.number, started, ok, detail, {"budget_seconds": step.budget})

    def halted(self, remaining: list[int], why_stop: Callable[[], str | None]) -> bool:
        """Asked immediately before a step: if the runbook is no longer about the
        present (a newer rollout of the service started while the last step ran,
        say), the step and the rest are recorded as not run, with why."""
        reason = why_stop()
        if reason is None:
            return False
        remaining = [number for number in remaining if number not in self.done]
        log.warning("runbook_stopped", rollout_id=self.rollout.id, step=remaining[0], reason=reason)
        for number in remaining:
            detail, data = f"not run: {reason}", {"not_run": reason}
            self.record(number, self.runtime.clock(), True, detail, data, skipped=True)
        return True

    def record(
        self,
        number: int,
        started: datetime,
        ok: bool,
        detail: str,
        data: dict[str, Any] | None = None,
        skipped: bool = False,
        finished: datetime | None = None,
    ) -> None:
        """One step's event, committed only while this delivery holds its row; with
        it, whatever the step changed in the session (the incident's webhook status)."""
        finished = finished or self.runtime.clock()
        data = {**(data or {}), **({"skipped": True} if skipped else {})}
        name = STEP_NAMES[number]
        verdict = "skipped" if skipped else "ok" if ok else "FAILED"
        row = {} if self.outbox_id is None else {"outbox_id": self.outbox_id}
        with self.hold(self.session):
            repository.append_event(
                self.session,
                self.rollout.id,
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
                    **row,
                    **data,
                },
                step_index=self.rollout.step_index,
            )
            self.session.commit()
        self.done.add(number)
        self.results.append(StepResult(number, name, ok, detail, started, finished, data))
        (log.info if ok else log.error)(
            "runbook_step", rollout_id=self.rollout.id, step=number, name=name, ok=ok, detail=detail
        )


def recorded_steps(session: Session, rollout_id: str, outbox_id: int | None) -> set[int]:
    """The steps already recorded for this outbox row: what a delivery of it that
    died did. Events of the rollout's other runbooks (an earlier rollback that
    failed, say) are not this row's."""
    if outbox_id is None:
        return set()
    return {
        int(e.data["step"])
        for e in repository.events_for(session, rollout_id, kinds=["runbook"])
        if e.data.get("outbox_id") == outbox_id
    }


@dataclass(frozen=True)
class _Step:
    """Steps 2 to 4: whether the plan has anything for it, its budget in seconds,
    and what it does, given that budget."""

    number: int
    configured: bool
    budget: float
    action: Callable[[float], tuple[bool, str]]


def _steps(plan: Plan, values: dict[str, str]) -> list[_Step]:
    runbook, checks = plan.runbook, CHECKS_BUDGET.total_seconds()
    hook = runbook.disable_canary
    return [
        _Step(
            2,
            bool(runbook.stable_healthchecks),
            checks,
            lambda seconds: run_checks(runbook.stable_healthchecks, values, seconds),
        ),
        _Step(
            3,
            bool(runbook.smoke_checks),
            checks,
            lambda seconds: run_checks(runbook.smoke_checks, values, seconds),
        ),
        _Step(
            4,
            hook is not None,
            hook_seconds(hook) if hook is not None else 0.0,
            lambda _seconds: disable_canary(hook, values),
        ),
    ]


def step_budgets(plan: Plan) -> dict[int, float]:
    """Seconds each step may take (steps 2 to 5), before the grace a step overrunning
    it is waited for: the plan's checks share their step's budget, the hook has its
    own timeout (at most 2 minutes), the incident its snapshot and post."""
    budgets = {step.number: step.budget for step in _steps(plan, {})}
    return {**budgets, 5: (SNAPSHOT_BUDGET + POST_BUDGET).total_seconds()}


def longest_seconds(plan: Plan) -> float:
    """The most a whole runbook of ``plan`` can take, graces included: what must fit
    inside the runbook task's soft time limit with room to spare."""
    waits = len(step_budgets(plan)) + 1  # step 5 waits twice: snapshot, then post
    return sum(step_budgets(plan).values()) + waits * OVERRUN_GRACE.total_seconds()


def _bounded(step: _Step, rollout_id: str) -> tuple[bool, str]:
    """Run a step's action within its budget (and a grace): a step over it is a failed
    step, saying why, and the runbook goes on with the next one."""
    try:
        return within(
            step.budget + OVERRUN_GRACE.total_seconds(),
            lambda: step.action(step.budget),
            name=f"runbook-step-{step.number}",
        )
    except timeouts.out_of_time():
        raise  # the task's time is up: no verdict on the step (controller.timeouts)
    except Overrun:
        log.error("runbook_step_overran", rollout_id=rollout_id, step=step.number)
        return False, (
            f"over its {step.budget:g}s budget: no result after "
            f"{step.budget + OVERRUN_GRACE.total_seconds():g}s, left to end on its own"
        )
    except Exception as exc:  # one broken step must not stop the others
        log.exception("runbook_step_crashed", rollout_id=rollout_id, step=step.number)
        return False, f"{type(exc).__name__}: {exc}"


def _open_incident(
    run: _Run, post: Callable[[dict[str, Any]], str], shift_started: datetime, failed: bool
) -> None:
    """Step 5: the incident is stored before it is posted, and its post recorded with
    the step, so a delivery that died before recording step 5 opens no second
    incident (one per rollout) and posts it again only if it died in the post."""
    started = run.runtime.clock()
    rollout = run.rollout
    # The snapshot shows the windows that led to the decision, not the quiet after it.
    trigger_at = (rollout.analysis or {}).get("trigger", {}).get("at")
    measured_at = datetime.fromisoformat(trigger_at) if trigger_at else shift_started
    snapshot = _snapshot_within(run, measured_at)
    with run.hold(run.session):
        incident = open_or_update_incident(
            run.session,
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
        run.session.commit()
    incident.webhook_status = _post_within(post, incident_document(incident, rollout))
    run.record(
        5,
        started,
        not incident.webhook_status.startswith("failed"),
        f"incident {incident.id} ({incident.webhook_status})",
        {"incident_id": incident.id},
    )


def _snapshot_within(run: _Run, at: datetime) -> list[dict[str, Any]]:
    """The metrics snapshot, or a row per criterion saying it was not taken in time:
    a slow Prometheus delays the incident by ``SNAPSHOT_BUDGET`` at most."""
    seconds = SNAPSHOT_BUDGET.total_seconds()
    try:
        return within(
            seconds + OVERRUN_GRACE.total_seconds(),
            lambda: metrics_snapshot(run.runtime, run.plan, run.values, at),
            name="runbook-snapshot",
        )
    except Overrun:
        reason = f"no metrics snapshot within {seconds:g}s"
        return [
            {
                "criterion": c.name,
                "verdict": "error",
                "value": None,
                "limit": None,
                "reason": reason,
                "at": at.isoformat(),
            }
            for c in run.plan.stop_criteria
        ]


def _post_within(post: Callable[[dict[str, Any]], str], document: dict[str, Any]) -> str:
    """The post's outcome, or a failure once ``POST_BUDGET`` (and the grace) passed."""
    seconds = POST_BUDGET.total_seconds()
    try:
        return within(seconds + OVERRUN_GRACE.total_seconds(), lambda: post(document), "post")
    except Overrun:
        return f"failed: no answer within {seconds:g}s"


def run_runbook_now(
    runtime: Runtime,
    rollout_id: str,
    shift: dict[str, Any],
    why_stop: Callable[[], str | None] = lambda: None,
    outbox_id: int | None = None,
    hold: Callable[[Session], AbstractContextManager[object]] | None = None,
) -> str:
    """Run the runbook after a rollback in this process (see ``controller.runbook``);
    returns one line saying how each step this run did went."""
    results = run_runbook(
        runtime,
        rollout_id,
        shift_started=datetime.fromisoformat(shift["shift_started"]),
        shifted_at=datetime.fromisoformat(shift["shifted_at"]),
        shift_detail=shift["shift_detail"],
        post=runtime.post_incident,
        traffic_on_stable=shift["traffic_on_stable"],
        why_stop=why_stop,
        outbox_id=outbox_id,
        hold=hold,
    )
    if not results:
        return "runbook: every step recorded already"
    ran = [r for r in results if "not_run" not in r.data]
    failed = [f"{r.number} {r.name}" for r in ran if not r.ok]
    # A delivery that died is resumed at the first step it did not record.
    runbook = (
        "runbook" if results[0].number == 1 else f"runbook (resumed at step {results[0].number})"
    )
    line = (
        f"{runbook}: {len(ran)} step(s), failed: {', '.join(failed)}"
        if failed
        else f"{runbook}: {len(ran)} step(s) ok"
    )
    stopped = [r for r in results if "not_run" in r.data]
    if stopped:
        numbers = ", ".join(str(r.number) for r in stopped)
        line += f"; step(s) {numbers} not run: {stopped[0].data['not_run']}"
    return line
