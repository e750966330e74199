"""The rollout state machine: one ``advance`` does one step of one rollout.

An advance owns the rollout through a lease, makes sure the router carries the
step's weight (absolute, read back), measures every stop criterion, records all of
it, and decides: hold, promote to the next step, succeed, pause for a human, or
hand over to the rollback. Waiting is a timestamp (``next_check_at``), never a
sleep, so a crashed worker loses nothing and the next one carries on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from controller import checks, outbox, timeouts
from controller.analysis.decisions import Streaks, missing_data_streaks, update_breaches
from controller.analysis.runner import Measurement, measure_all
from controller.analysis.verdict import Judgement, Verdict
from controller.budget import gates_work, smoke_allowance
from controller.check_clock import check_phase, next_tick
from controller.checks import CheckResult
from controller.durations import format_duration
from controller.hooks import run_hook
from controller.plan import (
    Criterion,
    OnLimit,
    Plan,
    SlotMode,
    SoakStage,
    Stage,
    Step,
    VerifyStage,
    render_template,
)
from controller.runtime import Runtime
from controller.slots import (
    Slots,
    VersionAnswers,
    ask_versions,
    rollout_values,
    slot_after_success,
    slots_of,
    version_mismatches,
)
from controller.soak import MAX_BURST_SECONDS, send_burst
from controller.stable_restore import needs_stable_restored, settle_wait
from controller.store import repository
from controller.store.models import (
    ROLLBACK_INTENT_STATES,
    WATCHED_STATES,
    Rollout,
    RolloutState,
)
from controller.stored_plans import plan_of
from controller.traffic.base import RouterError, TrafficRouter, serving_or_problem

log = structlog.get_logger(__name__)

ACTOR = "controller"
SLOT_VERSIONS = "slot_versions"  # the measurement of the plan's version check


@dataclass(frozen=True)
class AdvanceResult:
    """What one advance did, in words fit for a task result and a log line."""

    rollout_id: str
    acted: bool
    state: str | None = None
    stage: str | None = None
    weight: int | None = None
    summary: str = ""
    next_check_at: datetime | None = None

    def sentence(self) -> str:
        """One line of state for Flower and logs: where, how much traffic, what next."""
        if not self.acted:
            return f"{self.rollout_id}: nothing done ({self.summary})"
        weight = "-" if self.weight is None else f"{self.weight}%"
        nxt = (
            f"; next check {self.next_check_at:%H:%M:%S}"
            if self.next_check_at and self.state in ("pending", "running")
            else ""
        )
        return (
            f"{self.rollout_id} {self.state} at {self.stage}, weight {weight}: {self.summary}{nxt}"
        )


def rollout_variables(plan: Plan, rollout: Rollout, step: Step | None = None) -> dict[str, str]:
    """Template values for queries, checks and router settings: the built-ins and the
    plan's own variables with this rollout's overrides."""
    return rollout_values(plan, rollout, step.environment if step else "production")


def advance(runtime: Runtime, rollout_id: str) -> AdvanceResult:
    """Do the next thing for a rollout that is due; a no-op if it is not ours to do."""
    started = time.monotonic()
    with runtime.sessions() as session:
        now = runtime.clock()
        rollout = repository.claim(
            session, rollout_id, runtime.owner, now, runtime.lease, WATCHED_STATES, due_only=True
        )
        if rollout is None:
            return AdvanceResult(
                rollout_id, acted=False, summary="not due or owned by another worker"
            )
        step = _Advance(runtime, session, rollout)
        try:
            result = _gates_alone(step) or step.run()
            outbox.dispatch_now(runtime, step.promised)
            return result
        except StaleDataError:
            # Someone changed the rollout while we worked (a pause, an approval, a
            # rollback request). A rollback this advance decided must not be lost, and
            # traffic it moved must not stay where a rollback does not want it.
            session.rollback()
            requested = step.request_rollback_again() if step.pending_rollback else None
            if step.router_moved_to is not None:
                step.record_router_truth()
            return requested or AdvanceResult(
                rollout_id, acted=False, summary="rollout changed underneath; nothing written"
            )
        except timeouts.out_of_time() as exc:
            # The task's time limit struck: what was running is no verdict. A rollback
            # decided before it, on a real measurement, still stands.
            session.rollback()
            if step.pending_rollback is not None:
                requested = step.request_rollback_again()
                if step.router_moved_to is not None:
                    step.record_router_truth()
                return requested
            return _out_of_time(step, exc, time.monotonic() - started)
        finally:
            session.rollback()
            if not step.released:
                repository.release(session, rollout_id, runtime.owner)


OUT_OF_TIME_RETRY = timedelta(seconds=10)  # at the latest; sooner if the plan's interval is


def _gates_alone(step: _Advance) -> AdvanceResult | None:
    """The preflight gates in an advance of their own when they take time: together
    with the first step's smoke suite and soak they would not fit in one task
    (``controller.budget``). None when this advance is not about the gates."""
    rollout = step.rollout
    # Any state but paused: a rollout paused while pending or blocked and then resumed
    # is running, and its gates have still not passed.
    if rollout.state == RolloutState.PAUSED:
        return None
    if (rollout.analysis or {}).get("preflight") == "passed" or not gates_work(step.plan):
        return None
    blocked = step.preflight()
    if blocked is not None:
        return blocked
    rollout.next_check_at = step.now
    step.commit()
    return step.result("preflight gates passed; the first step begins at the next advance")


def _out_of_time(step: _Advance, exc: BaseException, seconds: float) -> AdvanceResult:
    """Record that the advance ran out of time, and decide nothing.

    The session is already rolled back, so no half of the step is written: the rollout
    keeps its state and step, and the next advance does the step's work again. An
    interrupted check is neither a pass nor a failure, so there is no rollback either.
    """
    rollout = step.rollout
    step.now = step.runtime.clock()
    running = timeouts.what_was_running(exc) or "what was running is not known"
    retry = min(step.plan.analysis.interval, OUT_OF_TIME_RETRY)
    try:
        rollout.next_check_at = step.now + retry
        step.event(
            "error",
            f"step ran out of time after {seconds:.0f}s: {running}; nothing decided, "
            f"checked again in {format_duration(retry)}",
            {"error": "out_of_time", "seconds": round(seconds, 1), "running": running},
        )
        step.commit()
        result = step.result(f"ran out of time after {seconds:.0f}s ({running}); nothing decided")
    except StaleDataError:
        step.session.rollback()
        result = AdvanceResult(
            rollout.id, acted=False, summary="ran out of time; rollout changed underneath"
        )
    step.log.error("step_out_of_time", seconds=round(seconds, 1), running=running)
    if step.router_moved_to is not None:
        step.record_router_truth()  # the router moved; the record must say what it carries
    return result


def last_measured(measurements: list[Measurement]) -> dict[str, dict[str, Any]]:
    """Each criterion's value, limit and verdict, kept on the rollout so that
    ``/metrics`` shows them without reading the event log."""
    found = {}
    for m in measurements:
        event = m.as_event()
        found[m.criterion] = {key: event.get(key) for key in ("value", "limit", "verdict")}
    return found


class _Advance:
    """One advance of one rollout, holding its lease."""

    def __init__(self, runtime: Runtime, session: Session, rollout: Rollout):
        self.runtime = runtime
        self.session = session
        self.rollout = rollout
        self.plan = plan_of(rollout)
        self.steps = self.plan.steps()
        self.now = runtime.clock()
        self.due = rollout.next_check_at  # when this advance was due, for next_tick
        self.log = log.bind(rollout_id=rollout.id, service=rollout.service)
        self.lifecycle: list[str] = []  # notifications promised with the next commit
        self.promised: list[tuple[int, str, str]] = []  # outbox rows committed
        self.pending_rollback: tuple[str, dict[str, Any], str | None] | None = None
        self.router_gave_up: str | None = None
        self.router_moved_to: int | None = None  # set once this advance moved traffic
        self.smoke_left = 0  # checks of the step's smoke suite left for later advances
        self.released = False  # the lease given back with this advance's last commit

    def next_tick(self, interval: timedelta) -> datetime:
        """The check after this one by the plan's clock: the due time plus the
        interval, not this advance's start plus it. An advance that starts a reconcile
        tick or a queue's wait after it was due would otherwise push every later check
        back by that much (5 checks a minute at a 10 s interval, not 6). A tick already
        missed is skipped, never caught up in a burst. With ``spread_checks`` the grid
        sits at the rollout's own phase (``controller.check_clock``)."""
        phase = check_phase(self.rollout.id) if self.runtime.spread_checks else None
        return next_tick(self.due, self.now, interval, phase)

    def event(
        self, kind: str, message: str, data: dict[str, Any] | None = None, actor: str = ACTOR
    ) -> None:
        repository.append_event(
            self.session,
            self.rollout.id,
            kind,
            actor=actor,
            at=self.now,
            message=message,
            data=data,
            step_index=self.rollout.step_index,
        )

    def result(self, summary: str) -> AdvanceResult:
        step = self.steps[min(self.rollout.step_index, len(self.steps) - 1)]
        return AdvanceResult(
            self.rollout.id,
            True,
            self.rollout.state,
            step.label,
            self.rollout.weight,
            summary,
            self.rollout.next_check_at,
        )

    def commit(self) -> None:
        """Commit the step, with its lifecycle notifications as outbox rows: they are
        sent after the commit, and again by reconcile if a send is lost."""
        self.rollout.updated_at = self.now
        rows = []
        if self.plan.notifications:
            rows = [
                (outbox.promise_notification(self.session, self.rollout.id, kind, self.now), kind)
                for kind in self.lifecycle
            ]
        self.lifecycle = []
        self.session.commit()
        self.promised += [(row_id, "notify", self.rollout.id) for row_id, _ in rows]

    def commit_and_release(self) -> None:
        """The advance's last write: the lease goes back in the same commit, saving
        the release's own transaction (a check's most common ending, a hold)."""
        self.rollout.lease_owner = None
        self.rollout.lease_expires_at = None
        self.commit()
        self.released = True

    def run(self) -> AdvanceResult:
        rollout = self.rollout
        if rollout.state == RolloutState.PAUSED:
            return self.watch_paused()
        drifted = self.check_drift()
        if drifted:
            return drifted
        if (rollout.analysis or {}).get("preflight") != "passed":
            blocked = self.preflight()
            if blocked:
                return blocked
        analysis = dict(rollout.analysis or {})
        not_started = rollout.step_index == 0 and rollout.step_started_at is None
        if not_started and not analysis.get("started_at"):
            # Once per rollout, also when the first advances were blocked by its gates.
            analysis["started_at"] = self.now.isoformat()
            rollout.analysis = analysis
            if rollout.state == RolloutState.PENDING:
                rollout.state = RolloutState.RUNNING
            self.event(
                "started",
                f"rollout started with plan {self.plan.name}: "
                + " -> ".join(s.label for s in self.steps),
                {"steps": [s.label for s in self.steps]},
            )
            self.lifecycle.append("started")
        step = self.steps[rollout.step_index]
        self.log = self.log.bind(stage=step.label)
        if rollout.step_started_at is None:
            missing = self.missing_stage_approvals(step)
            if missing:
                # Waiting for people must not stop watching the traffic already moved.
                if rollout.weight and step.index > 0:
                    watched = self.watch(self.steps[step.index - 1])
                    if watched:
                        return watched
                    overdue = self.past_progress_deadline()
                    if overdue:
                        return overdue
                return self.block(
                    f"{step.stage} awaits approval by {', '.join(missing)}",
                    self.awaiting(missing),
                    step.stage,
                )
        if rollout.state == RolloutState.BLOCKED:
            rollout.state = RolloutState.RUNNING
            rollout.reason = None
            self.event("unblocked", f"every gate before {step.label} passed; carrying on")
        self.stop_waiting()

        needs_traffic = rollout.weight != step.weight or rollout.step_started_at is None
        if needs_traffic and not self.apply_weight(step):
            if rollout.weight and step.index > 0:
                # The traffic already moved is still judged while the next move waits.
                watched = self.watch(self.steps[step.index - 1])
                if watched:
                    return watched
            if self.router_gave_up:
                return self.apply_limit_policy(self.router_gave_up)
            self.commit()
            return self.result(
                f"holding at {rollout.weight}%: router did not confirm {step.weight}%"
            )
        failed_smoke = self.smoke(step)
        if failed_smoke:
            return self.roll_back(failed_smoke, {"kind": "smoke", "stage": step.label})
        if step.kind == "soak":
            unhealthy = self.soak_healthchecks(step)
            if unhealthy:
                return self.roll_back(
                    f"staging soak failed: {unhealthy}", {"kind": "soak", "stage": step.label}
                )
            self.soak_load(step)

        measurements = self.measure(step)
        tripped = self.tripped(measurements)
        if tripped:
            return self.trip(step, tripped, measurements)
        limited = self.over_missing_data_limit(measurements)
        if limited:
            return limited
        if self.smoke_left:
            return self.hold_for_smoke(step)
        if (rollout.analysis or {}).get("redeploy"):
            return self.finish(step)
        return self.hold_or_promote(step, measurements)

    # -- gates ----------------------------------------------------------------

    def block(self, reason: str, results: list[CheckResult], gate: str) -> AdvanceResult:
        """Hold before traffic moves: state ``blocked``, checked again later or on demand."""
        rollout = self.rollout
        first = rollout.state != RolloutState.BLOCKED or rollout.reason != reason
        rollout.state = RolloutState.BLOCKED
        rollout.reason = reason
        rollout.next_check_at = self.now + self.plan.gates.recheck_interval
        if rollout.weight:
            # The canary carries traffic while it waits (a stage's approval): its stop
            # criteria are measured every analysis interval, not every gate recheck.
            rollout.next_check_at = min(
                rollout.next_check_at, self.next_tick(self.plan.analysis.interval)
            )
        if first:
            # One event per change of reason: a gate rechecked every few seconds
            # for an hour would otherwise fill the log with the same sentence.
            self.event("blocked", reason, {"gate": gate, "checks": [r.as_dict() for r in results]})
            self.lifecycle.append("blocked")
        self.commit()
        return self.result(f"blocked: {reason}")

    def preflight(self) -> AdvanceResult | None:
        """The go/no-go gates before anything moves; None when all pass."""
        values = rollout_variables(self.plan, self.rollout)
        results = checks.preflight(self.plan.gates, self.runtime.metrics, values)
        roles = [g.role for g in self.plan.gates.approvals]
        missing = checks.missing_approvals(self.plan, roles, self.approvals(), "preflight")
        results += self.awaiting(missing)
        unreconciled = self.writes_reconciled()
        if unreconciled is not None:
            results.append(unreconciled)
        failed = [r for r in results if not r.ok]
        if failed:
            return self.block(
                "preflight gates failing: " + "; ".join(f"{r.name}: {r.detail}" for r in failed),
                results,
                "preflight",
            )
        analysis = dict(self.rollout.analysis or {})
        analysis["preflight"] = "passed"
        self.rollout.analysis = analysis
        self.event(
            "gates_passed",
            f"preflight: {len(results)} gate(s) passed"
            if results
            else "preflight: no gates in the plan",
            {"gate": "preflight", "checks": [r.as_dict() for r in results]},
        )
        return None

    def writes_reconciled(self) -> CheckResult | None:
        """After a rollback for failed writes, the service's data must be reconciled
        (release checklist §3.3) before another rollout moves traffic."""
        release = repository.reconciliation_pending(self.session, self.rollout.service)
        if release is None:
            return None
        return CheckResult(
            "writes-reconciled",
            "reconciliation",
            False,
            f"data reconciliation after rollback {release.reconcile_required_by} "
            f"({release.reconcile_required_reason}) not recorded: run `canary reconcile-done "
            f"{self.rollout.service} --note ...` once it is done",
        )

    def awaiting(self, roles: list[str]) -> list[CheckResult]:
        """A failed gate check per role still to approve, naming its owners."""
        return [
            CheckResult(
                f"approval-{role}",
                "approval",
                False,
                f"awaiting approval by {role} ({', '.join(self.plan.owners[role])})",
            )
            for role in roles
        ]

    def missing_stage_approvals(self, step: Step) -> list[str]:
        """Roles that must still approve before this step's stage begins."""
        stage = self.stage_of(step)
        if not stage.approval or any(s.stage == step.stage for s in self.steps[: step.index]):
            return []
        return checks.missing_approvals(self.plan, stage.approval, self.approvals(), step.stage)

    def watch(self, step: Step) -> AdvanceResult | None:
        """Measure the traffic as it is; trip or apply the missing-data policy if due."""
        measurements = self.measure(step)
        tripped = self.tripped(measurements)
        if tripped:
            return self.trip(step, tripped, measurements)
        return self.over_missing_data_limit(measurements)

    def stage_of(self, step: Step) -> Stage:
        return next(s for s in self.plan.stages if s.name == step.stage)

    def approvals(self) -> list[dict[str, Any]]:
        return [e.data for e in repository.events_for(self.session, self.rollout.id, ["approval"])]

    # -- soak and verification --------------------------------------------------

    def smoke(self, step: Step) -> str | None:
        """Run the stage's smoke suite when the step begins; the failure if any.

        Each advance runs as many of its checks as fit in what the step's time budget
        leaves (``controller.budget.smoke_allowance``), at least one, and keeps the
        results in ``analysis["smoke_progress"]``: a suite longer than one task's time
        limit is spread over several advances instead of being cut off by it. Until
        the whole suite has passed, ``smoke_left`` holds the step (it is still
        measured, never promoted); a failed check rolls back at the end of its advance.
        """
        stage = self.stage_of(step)
        suite = getattr(stage, "smoke", None)
        analysis = dict(self.rollout.analysis or {})
        done = analysis.get("smoke_done", [])
        if not suite or step.index in done:
            return None
        suite_checks = checks.smoke_checks(suite)
        progress = analysis.get("smoke_progress") or {}
        results = list(progress.get("results", [])) if progress.get("step") == step.index else []
        values = rollout_variables(self.plan, self.rollout, step)
        allowance, spent, ran = smoke_allowance(self.plan, step), 0.0, 0
        for check in suite_checks[len(results) :]:
            seconds = checks.check_seconds(check)
            if ran and spent + seconds > allowance:
                break
            results.append(checks.run_smoke_check(check, values).as_dict())
            spent, ran = spent + seconds, ran + 1
        failed = [r for r in results if not r["ok"]]
        left = len(suite_checks) - len(results)
        if left and not failed:
            analysis["smoke_progress"] = {"step": step.index, "results": results}
            self.rollout.analysis = analysis
            self.smoke_left = left
            self.event(
                "smoke",
                f"smoke suite at {step.label}: {len(results)} of {len(suite_checks)} checks "
                f"passed so far; {left} more at the next advance",
                {"ok": True, "complete": False, "checks": results},
            )
            return None
        analysis.pop("smoke_progress", None)
        analysis["smoke_done"] = [*done, step.index]
        self.rollout.analysis = analysis
        self.event(
            "smoke",
            f"smoke suite at {step.label}: "
            + (
                "passed"
                if not failed
                else "FAILED: " + "; ".join(f"{r['name']}: {r['detail']}" for r in failed)
            ),
            {"ok": not failed, "complete": True, "checks": results},
        )
        if failed:
            return f"smoke suite failed at {step.label}: " + "; ".join(
                f"{r['name']}: {r['detail']}" for r in failed
            )
        return None

    def hold_for_smoke(self, step: Step) -> AdvanceResult:
        """The step's smoke suite has checks left: run them at the next advance, which
        is due at once, and promote nothing until they have passed."""
        self.rollout.next_check_at = self.now
        self.commit()
        return self.result(
            f"holding at {step.label}: {self.smoke_left} smoke check(s) left for the next advance"
        )

    def soak_load(self, step: Step) -> None:
        """Send the synthetic load due since the last advance (bounded per advance)."""
        stage = self.stage_of(step)
        load = getattr(stage, "load", None)
        if load is None:
            return
        analysis = dict(self.rollout.analysis or {})
        state = dict(analysis.get("soak_load", {}))
        last = datetime.fromisoformat(state["last"]) if state.get("last") else self.now
        due = load.rate * min(max((self.now - last).total_seconds(), 1.0), MAX_BURST_SECONDS)
        url = render_template(load.url, rollout_variables(self.plan, self.rollout, step))
        sent, errors = send_burst(url, int(due))
        state.update(
            last=self.now.isoformat(),
            sent=state.get("sent", 0) + sent,
            errors=state.get("errors", 0) + errors,
        )
        analysis["soak_load"] = state
        self.rollout.analysis = analysis

    def soak_healthchecks(self, step: Step) -> str | None:
        """The soak's healthchecks, at every advance of it; the failure if any."""
        stage = self.stage_of(step)
        if not isinstance(stage, SoakStage) or not stage.healthchecks:
            return None
        results = checks.run_http(
            stage.healthchecks, rollout_variables(self.plan, self.rollout, step)
        )
        analysis = dict(self.rollout.analysis or {})
        analysis["soak_healthchecks"] = analysis.get("soak_healthchecks", 0) + 1
        self.rollout.analysis = analysis
        failed = [r for r in results if not r.ok]
        if not failed:
            return None
        self.event(
            "healthcheck",
            f"healthcheck failed during {step.label}: "
            + "; ".join(f"{r.name}: {r.detail}" for r in failed),
            {"checks": [r.as_dict() for r in results], "ok": False},
        )
        return "failed healthcheck: " + "; ".join(f"{r.name}: {r.detail}" for r in failed)

    def soak_load_problem(self, step: Step) -> str | None:
        stage = self.stage_of(step)
        load = getattr(stage, "load", None)
        if step.kind != "soak" or load is None:
            return None
        state = (self.rollout.analysis or {}).get("soak_load", {})
        sent, errors = state.get("sent", 0), state.get("errors", 0)
        if not sent:
            return "no synthetic load was sent"
        if errors / sent > load.max_error_ratio:
            return (
                f"synthetic load: {errors} of {sent} requests failed "
                f"(limit {load.max_error_ratio:.0%})"
            )
        return None

    def verification(self, step: Step) -> list[CheckResult]:
        """Exit checks at the end of a soak (no P0/P1 alert firing) and of the verify
        hold (alerts quiet, no backlog)."""
        stage = self.stage_of(step)
        if not isinstance(stage, SoakStage | VerifyStage):
            return []
        values = rollout_variables(self.plan, self.rollout, step)
        results = []
        if stage.alerts_quiet:
            results.append(
                checks.no_firing_alerts(
                    "alerts-quiet", stage.alerts_quiet, self.runtime.metrics, values
                )
            )
        if isinstance(stage, VerifyStage) and stage.backlog:
            results.append(checks.backlog(stage.backlog, self.runtime.metrics, values))
        return results

    # -- traffic --------------------------------------------------------------

    def apply_weight(self, step: Step) -> bool:
        """Set the step's weight and keep it only if the router reads it back."""
        analysis = dict(self.rollout.analysis or {})
        try:
            router = self.runtime.router_for(
                self.plan, rollout_variables(self.plan, self.rollout, step)
            )
            confirmed, problem = None, self.refuses_more_canary_traffic(step.weight, router)
            if problem is None:
                router.set_canary_weight(step.weight)
                self.router_moved_to = step.weight
                confirmed = router.get_canary_weight()
                if confirmed != step.weight:
                    problem = f"router reads back {confirmed}% after setting {step.weight}%"
        except RouterError as exc:
            confirmed, problem = None, str(exc)
        if problem:
            analysis["router_errors"] = analysis.get("router_errors", 0) + 1
            self.rollout.analysis = analysis
            self.rollout.next_check_at = self.now + min(
                self.plan.analysis.interval, timedelta(seconds=10)
            )
            self.event(
                "router_error",
                f"traffic not moved to {step.weight}%: {problem}",
                {
                    "weight": step.weight,
                    "read_back": confirmed,
                    "error": problem,
                    "consecutive": analysis["router_errors"],
                },
            )
            self.log.warning("router_error", weight=step.weight, error=problem)
            if analysis["router_errors"] >= self.plan.analysis.error_limit:
                self.router_gave_up = (
                    f"router did not confirm {step.weight}% "
                    f"{analysis['router_errors']} times in a row: {problem}"
                )
            return False
        previous = self.rollout.weight
        analysis["router_errors"] = 0
        self.rollout.analysis = analysis
        self.rollout.weight = step.weight
        self.rollout.step_started_at = self.now
        if step.index == 0 or self.steps[step.index - 1].stage != step.stage:
            self.lifecycle.append("stage_changed")
        moved = previous != step.weight
        before = "-" if previous is None else f"{previous}%"
        self.event(
            "weight_set" if moved else "step_started",
            f"{step.label}: canary weight {before} -> {step.weight}% (read back from the router), "
            f"hold {format_duration(step.hold)}"
            if moved
            else f"{step.label}: canary weight stays at {step.weight}% (read back from the "
            f"router), hold {format_duration(step.hold)}",
            {
                "weight": step.weight,
                "previous": previous,
                "stage": step.stage,
                "kind": step.kind,
                "hold_seconds": step.hold.total_seconds(),
            },
        )
        self.log.info("weight_set", weight=step.weight, previous=previous)
        return True

    # -- analysis -------------------------------------------------------------

    def measure(self, step: Step) -> list[Measurement]:
        variables = rollout_variables(self.plan, self.rollout, step)
        state = dict(self.rollout.analysis or {})
        baselines = state.get("baselines", {})
        criteria = self.plan.criteria_for(step.stage)
        # Shared answers must be newer than the last this rollout judged and than its
        # step's start (its current weight): never the same data twice, nor data from
        # before the weight it judges. Except in the check that moved the traffic
        # (its step began at this check): nothing it can ask is from after the move,
        # and asking its own queries at this moment would read the same minutes as
        # the slot's shared answer, a query per criterion per rollout (1,000 rollouts
        # taking their canary traffic asked Prometheus 13,000 queries at once).
        last_shared = state.get("batched_at")
        moved_now = self.rollout.step_started_at == self.now
        moments = [
            None if moved_now else self.rollout.step_started_at,
            datetime.fromisoformat(last_shared) if last_shared else None,
        ]
        versions = self.ask_slot_versions(variables)  # answered while the criteria measure
        try:
            measurements = measure_all(
                criteria,
                self.runtime.metrics,
                variables,
                self.plan.analysis.window,
                self.now,
                previous_baselines=baselines,
                shared=self.runtime.shared_answers,
                interval=self.plan.analysis.interval,
                not_before=max((m for m in moments if m is not None), default=None),
            )
        except BaseException:
            if versions is not None:
                versions.cancel()  # out of time: never wait for the slots
            raise
        shared_at = [m.batched_at for m in measurements if m.batched_at is not None]
        if shared_at:
            state["batched_at"] = max(shared_at).isoformat()
        for criterion, m in zip(criteria, measurements, strict=True):
            measured_baseline = m.judgement.details.get("measured_baseline")
            if measured_baseline is not None:
                baselines[criterion.name] = measured_baseline
            self.event(
                "measurement",
                f"{criterion.name}: {m.verdict.value}: {m.judgement.reason}",
                m.as_event(),
            )
        state["baselines"] = baselines
        state["last_measured"] = {**state.get("last_measured", {}), **last_measured(measurements)}
        self.rollout.analysis = state
        if versions is not None:
            measurements.append(self.record_slot_versions(versions))
        return measurements

    def tripped(self, measurements: list[Measurement]) -> list[tuple[Criterion, Measurement, str]]:
        """Criteria whose failure has lasted ``sustained_for``.

        A pass ends a breach; inconclusive and error checks neither end nor extend it,
        so a gap in the data cannot hide a breach that is still going on.
        """
        state = dict(self.rollout.analysis or {})
        by_name = {c.name: c for c in self.plan.stop_criteria}
        state["breach_since"], trips = update_breaches(
            state.get("breach_since", {}), measurements, by_name, self.now
        )
        self.rollout.analysis = state
        return [(t.criterion, t.measurement, format_duration(t.lasted)) for t in trips]

    def trip(
        self,
        step: Step,
        tripped: list[tuple[Criterion, Measurement, str]],
        measurements: list[Measurement],
    ) -> AdvanceResult:
        criterion, measurement, lasted = tripped[0]
        reason = (
            f"stop criterion {criterion.name} tripped at {step.label} "
            f"(failing for {lasted}): {measurement.judgement.reason}"
        )
        self.event(
            "decision",
            reason,
            {
                "decision": "rollback",
                "criterion": criterion.name,
                "tripped": [c.name for c, _, _ in tripped],
                "value": measurement.as_event()["value"],
                "limit": measurement.as_event()["limit"],
            },
        )
        self.log.warning("criterion_tripped", criterion=criterion.name, reason=reason)
        trigger = {
            "kind": "criterion",
            "criterion": criterion.name,
            "stage": step.label,
            "value": measurement.as_event()["value"],
            "limit": measurement.as_event()["limit"],
        }
        return self.roll_back(reason, trigger, tripped=criterion.name, decided=True)

    def roll_back(
        self,
        reason: str,
        trigger: dict[str, Any],
        tripped: str | None = None,
        decided: bool = False,
    ) -> AdvanceResult:
        """Decide the rollback and request it in one commit (a worker killed between
        two commits would leave a decision in the log and nothing requested), then
        hand the rollout to the rollback queue (the rollback does the rest)."""
        self.pending_rollback = (reason, trigger, tripped)
        if not decided:
            self.event("decision", reason, {"decision": "rollback", **trigger})
        request = repository.rollback_request(
            self.rollout, reason=reason, actor=ACTOR, now=self.now, tripped=tripped, trigger=trigger
        )
        for column, value in request.items():
            setattr(self.rollout, column, value)
        repository.append_rollback_requested(
            self.session, self.rollout.id, reason=reason, actor=ACTOR, now=self.now, tripped=tripped
        )
        self.commit()
        self.enqueue_rollback()
        self.session.refresh(self.rollout)
        return self.result(f"rolling back: {reason}")

    def enqueue_rollback(self) -> None:
        """Put the requested rollback on its queue; the request is in the store already,
        so a broker that does not answer only delays it (reconcile sends it in seconds)."""
        try:
            self.runtime.enqueue_rollback(self.rollout.id)
        except Exception as exc:
            self.log.error("rollback_enqueue_failed", error=str(exc))

    def request_rollback(self, reason: str, trigger: dict[str, Any], tripped: str | None) -> None:
        """Mark the rollout for rollback (whoever holds it) and enqueue the rollback."""
        if repository.request_rollback(
            self.session,
            self.rollout.id,
            reason=reason,
            actor=ACTOR,
            now=self.now,
            tripped=tripped,
            trigger=trigger,
        ):
            self.enqueue_rollback()
        else:
            self.session.commit()

    def request_rollback_again(self) -> AdvanceResult:
        """After a concurrent change: record the decision and request the rollback anew
        (``request_rollback`` does not care about versions or leases)."""
        assert self.pending_rollback is not None
        reason, trigger, tripped = self.pending_rollback
        repository.append_event(
            self.session,
            self.rollout.id,
            "decision",
            actor=ACTOR,
            at=self.now,
            message=reason,
            data={"decision": "rollback", **trigger},
        )
        self.request_rollback(reason, trigger, tripped)
        return AdvanceResult(
            self.rollout.id, True, RolloutState.ROLLING_BACK, None, None, f"rolling back: {reason}"
        )

    def over_missing_data_limit(self, measurements: list[Measurement]) -> AdvanceResult | None:
        """Count checks that told us nothing; past the plan's limit, apply its policy."""
        state = dict(self.rollout.analysis or {})
        before = Streaks(state.get("error_streak", 0), state.get("inconclusive_streak", 0))
        after, why = missing_data_streaks(before, measurements, self.plan.analysis)
        state["error_streak"], state["inconclusive_streak"] = after.error, after.inconclusive
        self.rollout.analysis = state
        if why is None:
            return None
        return self.apply_limit_policy(why)

    def apply_limit_policy(self, why: str) -> AdvanceResult:
        """Held too long without knowing: the plan's ``on_limit`` decides; never promote."""
        if self.plan.analysis.on_limit == OnLimit.ROLLBACK:
            return self.roll_back(
                f"{why}; plan policy: roll back", {"kind": "policy", "policy": "on_limit"}
            )
        return self.pause(
            f"{why}; paused for a human (traffic stays at {self.rollout.weight}%)",
            policy="on_limit",
        )

    # -- progress -------------------------------------------------------------

    def hold_or_promote(self, step: Step, measurements: list[Measurement]) -> AdvanceResult:
        rollout = self.rollout
        policy = self.plan.analysis
        assert rollout.step_started_at is not None
        hold_ends = rollout.step_started_at + step.hold
        promoted_by = (rollout.analysis or {}).get("promote", {})
        if promoted_by.get("step") == step.index:
            hold_ends = min(hold_ends, self.now)  # a human skipped the rest of the hold
        all_pass = all(m.verdict == Verdict.PASS for m in measurements)
        if self.now >= hold_ends and all_pass:
            problem = self.soak_load_problem(step)
            if problem:
                return self.roll_back(
                    f"staging soak failed: {problem}", {"kind": "soak", "stage": step.label}
                )
            exits = self.verification(step)
            if exits:
                self.event(
                    "verification",
                    ("soak exit checks: " if step.kind == "soak" else "post-deploy checks: ")
                    + "; ".join(
                        f"{r.name}: {'ok' if r.ok else 'FAILED'} ({r.detail})" for r in exits
                    ),
                    {"checks": [r.as_dict() for r in exits]},
                )
            if all(r.ok for r in exits):
                rollout.analysis = {**(rollout.analysis or {}), "verification_failures": 0}
            else:
                all_pass = False
                analysis = dict(rollout.analysis or {})
                failures = analysis.get("verification_failures", 0) + 1
                analysis["verification_failures"] = failures
                rollout.analysis = analysis
                if failures >= policy.inconclusive_limit:
                    return self.apply_limit_policy(
                        f"{'soak exit' if step.kind == 'soak' else 'post-deploy'} checks "
                        f"failed {failures} times in a row"
                    )
        if self.now < hold_ends or not all_pass:
            interval = policy.interval
            if getattr(self.stage_of(step), "load", None) is not None:
                # Each advance sends the load due since the last one, at most a burst's
                # worth: come back before more than that is due, or the rate falls short.
                interval = min(interval, timedelta(seconds=MAX_BURST_SECONDS))
            if self.now < hold_ends:
                rollout.next_check_at = min(self.next_tick(interval), hold_ends)
            else:
                rollout.next_check_at = self.next_tick(interval)
            self.commit_and_release()
            verdicts = ", ".join(f"{m.criterion}={m.verdict.value}" for m in measurements)
            left = format_duration(max(hold_ends - self.now, timedelta(0)))
            waiting = (
                f"{left} of hold left"
                if self.now < hold_ends
                else "hold over, waiting for every criterion to pass"
            )
            return self.result(f"holding at {step.label}: {waiting}; {verdicts or 'no criteria'}")

        self.event(
            "step_completed",
            f"{step.label} passed: hold of {format_duration(step.hold)} over and every "
            "criterion passed",
            {"stage": step.stage, "weight": step.weight},
        )
        if rollout.step_index + 1 >= len(self.steps):
            return self.finish(step)
        rollout.step_index += 1
        rollout.step_started_at = None
        rollout.next_check_at = self.now
        nxt = self.steps[rollout.step_index]
        self.event(
            "decision",
            f"promote: {step.label} -> {nxt.label}",
            {"decision": "promote", "from": step.label, "to": nxt.label},
        )
        self.commit()
        return self.result(f"promoted to {nxt.label}")

    # -- finishing: the slot called stable serves the new release -------------

    def finish(self, step: Step) -> AdvanceResult:
        """Every step passed. Before the rollout may say ``succeeded``, the router must
        show the slot that will be called stable carrying the new version at 100 %:
        in swap mode that is the canary slot already; in redeploy mode the new version
        is deployed into the stable slot and traffic moves back to it."""
        slots = slots_of(self.plan, self.rollout)
        if self.plan.traffic.mode == SlotMode.REDEPLOY:
            waiting = self.redeploy_into_stable(slots)
            if waiting:
                return waiting
        else:
            problem = self.router_reads(100)
            if problem:
                return self.hold_for_router(f"before the slot swap: {problem}")
        return self.succeed(slot_after_success(self.plan, slots))

    def succeed(self, stable_slot: str) -> AdvanceResult:
        rollout = self.rollout
        rollout.state = RolloutState.SUCCEEDED
        rollout.finished_at = self.now
        rollout.reason = "every step passed"
        analysis = dict(rollout.analysis or {})
        analysis.pop("redeploy", None)
        rollout.analysis = analysis
        self.event(
            "decision",
            f"rollout succeeded: {rollout.canary_version} serves 100% of traffic from slot "
            f"{stable_slot}",
            {"decision": "succeeded", "stable_slot": stable_slot},
        )
        repository.mark_stable(
            self.session,
            rollout.service,
            rollout.canary_version,
            rollout.id,
            self.now,
            stable_slot=stable_slot,
        )
        self.event(
            "release_stable",
            f"{rollout.service} {rollout.canary_version} is the stable version, served by "
            f"slot {stable_slot} (read back from the router); the next rollout takes it as "
            "its baseline and deploys into the other slot",
            {
                "service": rollout.service,
                "version": rollout.canary_version,
                "stable_slot": stable_slot,
                "mode": str(self.plan.traffic.mode),
            },
        )
        self.lifecycle.append("succeeded")
        self.commit()
        self.log.info("succeeded", stable_slot=stable_slot)
        return self.result("succeeded")

    def redeploy_into_stable(self, slots: Slots) -> AdvanceResult | None:
        """Redeploy mode: run the hook once, wait until the stable slot serves the new
        version, then move all traffic back to it (read back). None once done."""
        rollout = self.rollout
        traffic = self.plan.traffic
        values = rollout_variables(self.plan, rollout)
        analysis = dict(rollout.analysis or {})
        state = dict(analysis.get("redeploy") or {"started_at": self.now.isoformat()})
        started = datetime.fromisoformat(state["started_at"])
        if "redeploy" not in analysis:
            # Intent before effect: from the moment the hook may run, a rollback must
            # deploy the stable version back before it moves traffic to the stable
            # slot (``controller.stable_restore``), also if this worker dies mid-hook.
            analysis["redeploy"] = dict(state)  # a copy: ``state`` changes below
            rollout.analysis = analysis
            self.event(
                "redeploy_intent",
                f"deploying {rollout.canary_version} into the stable slot {slots.stable}: "
                "a rollback from now on deploys the stable version back first",
                {"slot": slots.stable},
            )
            self.commit()
            analysis = dict(rollout.analysis or {})
        if not state.get("hook_ok"):
            assert traffic.redeploy is not None
            ok, detail = run_hook(traffic.redeploy, values)
            state["hook_attempts"] = state.get("hook_attempts", 0) + 1
            state["hook_ok"] = ok
            self.event(
                "redeploy",
                f"deploy {rollout.canary_version} into the stable slot {slots.stable}: "
                + ("started" if ok else "FAILED")
                + f" ({detail})",
                {"ok": ok, "detail": detail, "slot": slots.stable},
            )
            analysis["redeploy"] = state
            rollout.analysis = analysis
            if not ok and state["hook_attempts"] >= self.plan.analysis.error_limit:
                return self.apply_limit_policy(
                    f"the redeploy hook failed {state['hook_attempts']} times ({detail}); "
                    f"{rollout.canary_version} still serves 100% from the canary slot"
                )
        wrong = (
            version_mismatches(self.plan, values, {"stable": rollout.canary_version})
            if state.get("hook_ok")
            else ["the redeploy hook has not succeeded yet"]
        )
        if wrong:
            state.pop("ready_since", None)
        else:
            wrong = self.stable_settled(state)
        analysis["redeploy"] = state
        rollout.analysis = analysis
        if wrong:
            if self.now - started >= traffic.redeploy_timeout:
                return self.apply_limit_policy(
                    f"the stable slot {slots.stable} does not serve {rollout.canary_version} "
                    f"{format_duration(traffic.redeploy_timeout)} after the redeploy began "
                    f"({'; '.join(wrong)})"
                )
            rollout.next_check_at = self.now + min(
                self.plan.analysis.interval, timedelta(seconds=5)
            )
            self.commit()
            return self.result(f"waiting for the redeploy: {'; '.join(wrong)}")
        problem = self.set_and_read(0)
        if problem:
            return self.hold_for_router(f"moving traffic back to the stable slot: {problem}")
        self.event(
            "weight_set",
            f"redeploy: canary weight {rollout.weight}% -> 0% (read back from the router); "
            f"the stable slot {slots.stable} serves {rollout.canary_version}",
            {"weight": 0, "previous": rollout.weight, "stage": "redeploy", "kind": "redeploy"},
        )
        rollout.weight = 0
        return None

    def stable_settled(self, state: dict[str, Any]) -> list[str]:
        """Redeploy mode, the stable slot serving the new version on its own address:
        the router must also hold it up, and have for ``redeploy_settle`` without a
        change (``controller.stable_restore.settle_wait``). Empty once settled, else
        what is awaited; ``state`` keeps since when the slot has looked ready."""
        return settle_wait(
            serving_or_problem(self.router(), "stable"),
            state,
            self.now,
            self.plan.traffic.redeploy_settle,
            self.rollout.canary_version,
        )

    # -- the router is the truth ------------------------------------------------

    def router(self) -> TrafficRouter:
        return self.runtime.router_for(self.plan, rollout_variables(self.plan, self.rollout))

    def refuses_more_canary_traffic(
        self, weight: int, router: TrafficRouter | None = None
    ) -> str | None:
        """Before the canary's share rises above the record's (a step, a drift
        re-asserted): the router must be able to send the canary side traffic. Weights
        are shares among the servers the router holds up, so raising them on a canary
        it holds down does not test the canary, and at 100 % sends users nowhere.
        Never asked before a lower weight or a rollback."""
        if weight <= (self.rollout.weight or 0):
            return None
        try:
            problem = (router or self.router()).serving("canary").problem
        except RouterError as exc:
            return str(exc)
        return None if problem is None else f"the canary cannot take traffic: {problem}"

    def set_and_read(self, weight: int) -> str | None:
        """Set an absolute weight and read it back; the problem if it did not take."""
        try:
            router = self.router()
            router.set_canary_weight(weight)
            self.router_moved_to = weight
        except RouterError as exc:
            return str(exc)
        return self.router_reads(weight)

    def router_reads(self, weight: int) -> str | None:
        try:
            actual = self.router().get_canary_weight()
        except RouterError as exc:
            return str(exc)
        return None if actual == weight else f"router reads {actual}%, expected {weight}%"

    def hold_for_router(self, problem: str) -> AdvanceResult:
        """The router did not show what it must: say so, and try again shortly."""
        self.event("router_error", problem, {"error": problem})
        self.log.warning("router_error", error=problem)
        self.rollout.next_check_at = self.now + min(
            self.plan.analysis.interval, timedelta(seconds=10)
        )
        self.commit()
        return self.result(f"holding: {problem}")

    def check_drift(self) -> AdvanceResult | None:
        """Read the weight at every advance. A difference from the record (a reload
        reset it, someone set it by hand) is a ``drift`` event; the plan's policy
        decides: re-assert the recorded weight (default), pause or roll back."""
        rollout = self.rollout
        expected = rollout.weight
        if expected is None:
            return None
        try:
            actual = self.router().get_canary_weight()
        except RouterError as exc:
            self.event("router_error", f"cannot read the router: {exc}", {"error": str(exc)})
            return None
        if actual == expected:
            return None
        policy = self.plan.analysis.on_drift
        self.event(
            "drift",
            f"router gives the canary {actual}%, the record says {expected}%; policy: {policy}",
            {"expected": expected, "actual": actual, "policy": policy},
        )
        self.log.warning("drift", expected=expected, actual=actual, policy=policy)
        rollout.weight = actual  # the record never claims what the router does not show
        if policy == "rollback":
            return self.roll_back(
                f"traffic drifted: router gives the canary {actual}%, expected {expected}%",
                {"kind": "policy", "policy": "on_drift", "expected": expected, "actual": actual},
            )
        if policy == "pause":
            return self.pause(
                f"traffic drifted: router gives the canary {actual}%, expected {expected}%; "
                "paused for a human"
            )
        # The record already reads ``actual``: a rise back to ``expected`` asks first.
        problem = self.refuses_more_canary_traffic(expected) or self.set_and_read(expected)
        if problem:
            return self.hold_for_router(f"re-asserting {expected}% after a drift: {problem}")
        rollout.weight = expected
        if rollout.step_started_at is not None and rollout.state == RolloutState.RUNNING:
            # The step's evidence was gathered at the wrong weight: its hold starts again.
            rollout.step_started_at = self.now
        self.event(
            "weight_set",
            f"drift: canary weight {actual}% -> {expected}% re-asserted (read back from the "
            "router)",
            {"weight": expected, "previous": actual, "reasserted": True},
        )
        return None

    def record_router_truth(self) -> None:
        """After this advance moved traffic but lost its commit (a pause, an approval or
        a rollback request landed mid-step), make the record and the router agree.

        A rollback requested meanwhile (an alert, a person) may already have shifted
        traffic to stable and read back 0 before this advance raised the weight: the
        move must not stand for even a second, so the canary goes back to 0 here, at
        once, rather than when the rollback next looks (with the broker down it would
        never look). Otherwise the record takes what the router really carries."""
        self.session.rollback()
        self.session.expire_all()
        current = repository.get_rollout(self.session, self.rollout.id)
        if current is not None and current.state in ROLLBACK_INTENT_STATES:
            self.undo_move_for_rollback(current)
            return
        try:
            actual = self.router().get_canary_weight()
        except RouterError as exc:
            self.log.warning("router_unreadable_after_lost_commit", error=str(exc))
            return
        repository.record_router_weight(
            self.session,
            self.rollout.id,
            self.runtime.owner,
            actual,
            self.runtime.clock(),
            "the step that set it lost its commit to a concurrent change",
        )

    def undo_move_for_rollback(self, current: Rollout) -> None:
        """Put the canary weight this advance set back to 0, read back, because a
        rollback was requested while it worked. Not in redeploy mode once the stable
        slot is being redeployed: there 0 % sends users to a slot that may not serve
        the stable version, and the rollback puts the stable version back first."""
        if needs_stable_restored(self.plan, current):
            self.log.warning("lost_commit_during_rollback_in_redeploy", weight=self.router_moved_to)
            return
        moved = self.router_moved_to
        problem = self.set_and_read(0)
        now = self.runtime.clock()
        if problem:
            message = (
                f"this advance set the canary to {moved}% while a rollback was requested, "
                f"and could not put it back to 0%: {problem}; the rollback shifts it"
            )
            self.log.error("rollback_race_undo_failed", weight=moved, error=problem)
        else:
            message = (
                f"this advance set the canary to {moved}% while a rollback was requested: "
                "put back to 0% at once (read back from the router)"
            )
            self.log.warning("rollback_race_undone", weight=moved)
        repository.append_event(
            self.session,
            current.id,
            "weight_set" if not problem else "router_error",
            actor=ACTOR,
            at=now,
            message=message,
            data={
                "weight": 0 if not problem else None,
                "previous": moved,
                "rollback": True,
                "error": problem,
            },
            step_index=current.step_index,
        )
        self.session.commit()

    def ask_slot_versions(self, values: dict[str, str]) -> VersionAnswers | None:
        """With a version check in the plan: start asking whether the stable slot
        serves the stable version and the canary slot the canary version."""
        if self.plan.traffic.version_check is None:
            return None
        expected = {"canary": self.rollout.canary_version}
        if not (self.rollout.analysis or {}).get("redeploy"):
            expected["stable"] = self.rollout.stable_version
        return ask_versions(self.plan, values, expected)

    def record_slot_versions(self, versions: VersionAnswers) -> Measurement:
        """The slots' answers as a measurement: a mismatch is an error, never a pass."""
        with timeouts.running("slot versions"):
            wrong = versions.problems()
        verdict = Verdict.ERROR if wrong else Verdict.PASS
        reason = "; ".join(wrong) if wrong else "each slot serves its version"
        measurement = Measurement(
            SLOT_VERSIONS, "version_check", {}, {}, Judgement(verdict, reason)
        )
        self.event(
            "measurement", f"{SLOT_VERSIONS}: {verdict.value}: {reason}", measurement.as_event()
        )
        return measurement

    # -- paused, blocked, waiting: still watched ----------------------------------

    def traffic_step(self) -> Step:
        """The step whose weight the router carries now."""
        index = self.rollout.step_index
        if self.rollout.step_started_at is None and index > 0:
            index -= 1
        return self.steps[min(index, len(self.steps) - 1)]

    def watch_paused(self) -> AdvanceResult:
        """A paused rollout with traffic is measured every interval like any other:
        pausing stops progress, never protection."""
        rollout = self.rollout
        if not rollout.weight:
            return AdvanceResult(rollout.id, False, rollout.state, summary="paused, no traffic")
        drifted = self.check_drift()
        if drifted:
            return drifted
        step = self.traffic_step()
        measurements = self.measure(step)
        tripped = self.tripped(measurements)
        if tripped:
            return self.trip(step, tripped, measurements)
        overdue = self.past_progress_deadline()
        if overdue:
            return overdue
        rollout.next_check_at = self.next_tick(self.plan.analysis.interval)
        self.commit()
        verdicts = ", ".join(f"{m.criterion}={m.verdict.value}" for m in measurements)
        return self.result(f"paused at {rollout.weight}%, still watched: {verdicts}")

    def past_progress_deadline(self) -> AdvanceResult | None:
        """Held with traffic (paused, blocked, awaiting approval) longer than the plan's
        progress deadline: notify once, or roll back, as the plan says."""
        analysis = dict(self.rollout.analysis or {})
        since = analysis.get("waiting_since")
        if since is None:
            analysis["waiting_since"] = self.now.isoformat()
            self.rollout.analysis = analysis
            return None
        waited = self.now - datetime.fromisoformat(since)
        policy = self.plan.analysis
        if waited < policy.progress_deadline or analysis.get("deadline_passed"):
            return None
        why = (
            f"{self.rollout.state} with {self.rollout.weight}% on the canary for "
            f"{format_duration(waited)} (progress deadline "
            f"{format_duration(policy.progress_deadline)})"
        )
        analysis["deadline_passed"] = self.now.isoformat()
        self.rollout.analysis = analysis
        self.event(
            "progress_deadline",
            f"{why}; policy: {policy.on_progress_deadline}",
            {"waited_seconds": waited.total_seconds(), "policy": policy.on_progress_deadline},
        )
        self.log.warning("progress_deadline", waited=waited.total_seconds())
        if policy.on_progress_deadline == "rollback":
            return self.roll_back(
                f"{why}; plan policy: roll back", {"kind": "policy", "policy": "progress_deadline"}
            )
        self.lifecycle.append("progress_deadline")
        return None

    def stop_waiting(self) -> None:
        """Progress again: the progress deadline starts anew at the next wait."""
        analysis = dict(self.rollout.analysis or {})
        if "waiting_since" in analysis or "deadline_passed" in analysis:
            analysis.pop("waiting_since", None)
            analysis.pop("deadline_passed", None)
            self.rollout.analysis = analysis

    def pause(self, reason: str, policy: str = "on_drift") -> AdvanceResult:
        """Stop progress for a human; a canary with traffic is still measured."""
        self.rollout.state = RolloutState.PAUSED
        self.rollout.reason = reason
        self.rollout.next_check_at = self.now + self.plan.analysis.interval
        self.event("decision", reason, {"decision": "pause", "policy": policy})
        self.lifecycle.append("paused")
        self.commit()
        self.log.warning("paused", reason=reason)
        return self.result("paused: " + reason)
