"""The rollout state machine: one ``advance`` does one step of one rollout.

An advance owns the rollout through a lease, makes sure the router carries the
step's weight (absolute, read back), measures every stop criterion, records all of
it, and decides: hold, promote to the next step, succeed, pause for a human, or
hand over to the rollback. Waiting is a timestamp (``next_check_at``), never a
sleep, so a crashed worker loses nothing and the next one carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from controller import checks
from controller.analysis.runner import Measurement, measure
from controller.analysis.verdict import Verdict
from controller.checks import CheckResult
from controller.durations import format_duration
from controller.plan import (
    Criterion,
    OnLimit,
    Plan,
    SoakStage,
    Stage,
    Step,
    VerifyStage,
    render_template,
)
from controller.runtime import Runtime
from controller.soak import MAX_BURST_SECONDS, send_burst
from controller.store import repository
from controller.store.models import ADVANCING_STATES, Rollout, RolloutState
from controller.traffic.base import RouterError

log = structlog.get_logger(__name__)

ACTOR = "controller"


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
    builtins = {
        "service": rollout.service,
        "canary_version": rollout.canary_version,
        "stable_version": rollout.stable_version,
        "environment": step.environment if step else "production",
    }
    return plan.template_values(builtins, rollout.variables)


def advance(runtime: Runtime, rollout_id: str) -> AdvanceResult:
    """Do the next thing for a rollout that is due; a no-op if it is not ours to do."""
    with runtime.sessions() as session:
        now = runtime.clock()
        rollout = repository.claim(
            session, rollout_id, runtime.owner, now, runtime.lease, ADVANCING_STATES, due_only=True
        )
        if rollout is None:
            return AdvanceResult(
                rollout_id, acted=False, summary="not due or owned by another worker"
            )
        step = _Advance(runtime, session, rollout)
        try:
            result = step.run()
            for kind in step.lifecycle:
                runtime.notify(rollout_id, kind)
            return result
        except StaleDataError:
            # Someone changed the rollout while we worked (a pause, an approval, a
            # rollback request). A rollback this advance decided must not be lost.
            session.rollback()
            if step.pending_rollback is not None:
                return step.request_rollback_again()
            return AdvanceResult(
                rollout_id, acted=False, summary="rollout changed underneath; nothing written"
            )
        finally:
            session.rollback()
            repository.release(session, rollout_id, runtime.owner)


class _Advance:
    """One advance of one rollout, holding its lease."""

    def __init__(self, runtime: Runtime, session: Session, rollout: Rollout):
        self.runtime = runtime
        self.session = session
        self.rollout = rollout
        self.plan = Plan.from_data(rollout.plan)
        self.steps = self.plan.steps()
        self.now = runtime.clock()
        self.log = log.bind(rollout_id=rollout.id, service=rollout.service)
        self.lifecycle: list[str] = []  # notifications to send once this advance commits
        self.pending_rollback: tuple[str, dict[str, Any], str | None] | None = None
        self.router_gave_up: str | None = None

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
        self.rollout.updated_at = self.now
        self.session.commit()

    def run(self) -> AdvanceResult:
        rollout = self.rollout
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
                return self.block(
                    f"{step.stage} awaits approval by {', '.join(missing)}",
                    [
                        CheckResult(
                            f"approval-{role}",
                            "approval",
                            False,
                            f"awaiting approval by {role} ({', '.join(self.plan.owners[role])})",
                        )
                        for role in missing
                    ],
                    step.stage,
                )
        if rollout.state == RolloutState.BLOCKED:
            rollout.state = RolloutState.RUNNING
            rollout.reason = None
            self.event("unblocked", f"every gate before {step.label} passed; carrying on")

        needs_traffic = rollout.weight != step.weight or rollout.step_started_at is None
        if needs_traffic and not self.apply_weight(step):
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
        return self.hold_or_promote(step, measurements)

    # -- gates ----------------------------------------------------------------

    def block(self, reason: str, results: list[CheckResult], gate: str) -> AdvanceResult:
        """Hold before traffic moves: state ``blocked``, checked again later or on demand."""
        rollout = self.rollout
        first = rollout.state != RolloutState.BLOCKED or rollout.reason != reason
        rollout.state = RolloutState.BLOCKED
        rollout.reason = reason
        rollout.next_check_at = self.now + self.plan.gates.recheck_interval
        self.event("blocked", reason, {"gate": gate, "checks": [r.as_dict() for r in results]})
        if first:
            self.lifecycle.append("blocked")
        self.commit()
        return self.result(f"blocked: {reason}")

    def preflight(self) -> AdvanceResult | None:
        """The go/no-go gates before anything moves; None when all pass."""
        values = rollout_variables(self.plan, self.rollout)
        results = checks.preflight(self.plan.gates, self.runtime.metrics, values)
        roles = [g.role for g in self.plan.gates.approvals]
        missing = checks.missing_approvals(self.plan, roles, self.approvals(), "preflight")
        results += [
            CheckResult(
                f"approval-{role}",
                "approval",
                False,
                f"awaiting approval by {role} ({', '.join(self.plan.owners[role])})",
            )
            for role in missing
        ]
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
        """Run the stage's smoke suite once, when the step begins; the failure if any."""
        stage = self.stage_of(step)
        suite = getattr(stage, "smoke", None)
        analysis = dict(self.rollout.analysis or {})
        done = analysis.get("smoke_done", [])
        if not suite or step.index in done:
            return None
        results = checks.run_smoke(suite, rollout_variables(self.plan, self.rollout, step))
        analysis["smoke_done"] = [*done, step.index]
        self.rollout.analysis = analysis
        failed = [r for r in results if not r.ok]
        self.event(
            "smoke",
            f"smoke suite at {step.label}: "
            + (
                "passed"
                if not failed
                else "FAILED: " + "; ".join(f"{r.name}: {r.detail}" for r in failed)
            ),
            {"ok": not failed, "checks": [r.as_dict() for r in results]},
        )
        if failed:
            return f"smoke suite failed at {step.label}: " + "; ".join(
                f"{r.name}: {r.detail}" for r in failed
            )
        return None

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
            router.set_canary_weight(step.weight)
            confirmed = router.get_canary_weight()
        except RouterError as exc:
            confirmed, problem = None, str(exc)
        else:
            problem = (
                None
                if confirmed == step.weight
                else (f"router reads back {confirmed}% after setting {step.weight}%")
            )
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
        measurements = []
        for criterion in self.plan.criteria_for(step.stage):
            m = measure(
                criterion,
                self.runtime.metrics,
                variables,
                self.plan.analysis.window,
                self.now,
                previous_baseline=baselines.get(criterion.name),
            )
            measurements.append(m)
            measured_baseline = m.judgement.details.get("measured_baseline")
            if measured_baseline is not None:
                baselines[criterion.name] = measured_baseline
            self.event(
                "measurement",
                f"{criterion.name}: {m.verdict.value}: {m.judgement.reason}",
                m.as_event(),
            )
        state["baselines"] = baselines
        self.rollout.analysis = state
        return measurements

    def tripped(self, measurements: list[Measurement]) -> list[tuple[Criterion, Measurement, str]]:
        """Criteria whose failure has lasted ``sustained_for``.

        A pass ends a breach; inconclusive and error checks neither end nor extend it,
        so a gap in the data cannot hide a breach that is still going on.
        """
        state = dict(self.rollout.analysis or {})
        breaches: dict[str, str | None] = dict(state.get("breach_since", {}))
        by_name = {c.name: c for c in self.plan.stop_criteria}
        tripped = []
        for m in measurements:
            criterion = by_name[m.criterion]
            if m.verdict == Verdict.PASS:
                breaches[m.criterion] = None
            elif m.verdict == Verdict.FAIL:
                since = breaches.get(m.criterion)
                started = datetime.fromisoformat(since) if since else self.now
                breaches[m.criterion] = started.isoformat()
                lasted = self.now - started
                if lasted >= criterion.sustained_for:
                    tripped.append((criterion, m, format_duration(lasted)))
        state["breach_since"] = breaches
        self.rollout.analysis = state
        return tripped

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
        """Hand the rollout to the rollback queue (the rollback does the rest)."""
        self.pending_rollback = (reason, trigger, tripped)
        if not decided:
            self.event("decision", reason, {"decision": "rollback", **trigger})
        self.commit()
        self.request_rollback(reason, trigger, tripped)
        self.session.refresh(self.rollout)
        return self.result(f"rolling back: {reason}")

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
            self.runtime.enqueue_rollback(self.rollout.id)
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
        policy = self.plan.analysis
        state = dict(self.rollout.analysis or {})
        verdicts = {m.verdict for m in measurements}
        state["error_streak"] = state.get("error_streak", 0) + 1 if Verdict.ERROR in verdicts else 0
        state["inconclusive_streak"] = (
            state.get("inconclusive_streak", 0) + 1 if Verdict.INCONCLUSIVE in verdicts else 0
        )
        self.rollout.analysis = state
        if state["error_streak"] >= policy.error_limit:
            why = f"{state['error_streak']} checks in a row could not reach Prometheus"
        elif state["inconclusive_streak"] >= policy.inconclusive_limit:
            why = f"{state['inconclusive_streak']} checks in a row were inconclusive (no data)"
        else:
            return None
        return self.apply_limit_policy(why)

    def apply_limit_policy(self, why: str) -> AdvanceResult:
        """Held too long without knowing: the plan's ``on_limit`` decides; never promote."""
        if self.plan.analysis.on_limit == OnLimit.ROLLBACK:
            return self.roll_back(
                f"{why}; plan policy: roll back", {"kind": "policy", "policy": "on_limit"}
            )
        reason = f"{why}; paused for a human (traffic stays at {self.rollout.weight}%)"
        self.rollout.state = RolloutState.PAUSED
        self.rollout.reason = reason
        self.event("decision", reason, {"decision": "pause", "policy": "on_limit"})
        self.lifecycle.append("paused")
        self.commit()
        self.log.warning("paused", reason=reason)
        return self.result("paused: " + why)

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
                rollout.next_check_at = min(self.now + interval, hold_ends)
            else:
                rollout.next_check_at = self.now + interval
            self.commit()
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
            rollout.state = RolloutState.SUCCEEDED
            rollout.finished_at = self.now
            rollout.reason = "every step passed"
            self.event(
                "decision",
                f"rollout succeeded: {rollout.canary_version} serves {rollout.weight}% of traffic",
                {"decision": "succeeded"},
            )
            repository.mark_stable(
                self.session, rollout.service, rollout.canary_version, rollout.id, self.now
            )
            self.event(
                "release_stable",
                f"{rollout.service} {rollout.canary_version} is the "
                "stable version; the next rollout takes it as its baseline",
                {"service": rollout.service, "version": rollout.canary_version},
            )
            self.lifecycle.append("succeeded")
            self.commit()
            self.log.info("succeeded")
            return self.result("succeeded")
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
