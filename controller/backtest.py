"""Replay a plan's stop criteria against Prometheus history: what would the controller
have decided, and when?

Before trusting a plan with a release (or after an incident), it is worth knowing
whether its criteria would have caught a bad canary, how soon, and whether they would
have stopped a good one. A backtest measures every criterion at each check time of a
past range (every ``analysis.interval``) with instant queries at those instants, and
applies the controller's own decision rules (``controller.analysis.decisions``) to
them. Nothing here touches the store, the router or the services: only the provider
it is given, so tests can script the numbers.

It replays the criteria of the production stages with ``environment=production``,
and the plan's production steps with their holds: a check where every criterion
passes after a step's hold promotes, as the engine does, and the last step's
promotion is the rollout's success. The history itself was recorded at whatever
weights the canary really had, so a promotion says when the plan would have moved
traffic, not what that traffic would have shown. What it leaves out: gates,
approvals (a stage's approval counts as given when the stage is due), the exit checks
at the end of a hold, and the slot version check (they read live services).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from controller.analysis.decisions import (
    Streaks,
    Trip,
    missing_data_streaks,
    update_breaches,
)
from controller.analysis.runner import (
    Measurement,
    MetricsProvider,
    absent_failures_with_traffic,
    measure,
)
from controller.analysis.verdict import Verdict
from controller.durations import format_duration, parse_duration
from controller.metrics.prometheus import MetricsError
from controller.operations import OperationError, check_identifier
from controller.plan import Criterion, OnLimit, Plan, SoakStage
from controller.slots import Slots, template_values

MAX_CHECKS = 10_000  # each check is a query or more per criterion


class BacktestError(OperationError):
    """Input a backtest cannot run with; the message names the option."""


class Action(StrEnum):
    """What the controller does after one check."""

    CONTINUE = "continue"  # every criterion passed
    HOLD = "hold"  # a breach not yet sustained, or missing data under the limits
    PAUSE = "pause"  # the missing-data limit with on_limit: pause (and, after it, paused)
    ROLLBACK = "rollback"  # a criterion tripped, or a limit with on_limit: rollback


@dataclass(frozen=True)
class Decision:
    """The decision at one check and why; ``criterion`` is the one that tripped."""

    action: Action
    reason: str
    criterion: str | None = None
    tripped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    """One evaluation time: every criterion's measurement, the decision, the step the
    rollout stood at, and where it was promoted to (a step, or ``succeeded``)."""

    at: datetime
    measurements: list[Measurement]
    decision: Decision
    step: str = ""
    promoted_to: str | None = None


SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class Outcome:
    """How the replayed range ends for the canary."""

    action: Action  # rollback, pause, continue, or hold (still undecided at the end)
    at: datetime | None
    reason: str
    criterion: str | None = None
    step: str = ""  # where the rollout stood then
    succeeded_at: datetime | None = None  # continue: when the last step's hold passed

    def sentence(self) -> str:
        when = f" at {format_time(self.at)}" if self.at else ""
        where = f" ({self.step})" if self.step else ""
        if self.action == Action.ROLLBACK:
            return f"would have rolled back{when}{where}: {self.reason}"
        if self.action == Action.PAUSE:
            return f"would have paused{when}{where} and left the decision to a human: {self.reason}"
        if self.action == Action.CONTINUE and self.succeeded_at is not None:
            return f"would have succeeded at {format_time(self.succeeded_at)}: {self.reason}"
        if self.action == Action.CONTINUE:
            return f"would have let the canary continue{where}: {self.reason}"
        return f"would still be holding at the end{when}{where}: {self.reason}"


@dataclass(frozen=True)
class Backtest:
    """A whole replay: its inputs, every check, and the outcome."""

    plan: str
    service: str
    canary_version: str
    stable_version: str
    start: datetime
    end: datetime
    interval: timedelta
    checks: list[Check]
    outcome: Outcome

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document: the same measurement payloads the event log keeps."""
        return {
            "plan": self.plan,
            "service": self.service,
            "canary_version": self.canary_version,
            "stable_version": self.stable_version,
            "from": format_time(self.start),
            "to": format_time(self.end),
            "interval": format_duration(self.interval),
            "checks": [
                {
                    "at": format_time(c.at),
                    "step": c.step,
                    "promoted_to": c.promoted_to,
                    "decision": c.decision.action.value,
                    "reason": c.decision.reason,
                    "criterion": c.decision.criterion,
                    "tripped": c.decision.tripped,
                    "criteria": [m.as_event() for m in c.measurements],
                }
                for c in self.checks
            ],
            "outcome": {
                "decision": self.outcome.action.value,
                "at": format_time(self.outcome.at) if self.outcome.at else None,
                "criterion": self.outcome.criterion,
                "step": self.outcome.step,
                "succeeded_at": (
                    format_time(self.outcome.succeeded_at) if self.outcome.succeeded_at else None
                ),
                "reason": self.outcome.reason,
                "summary": self.outcome.sentence(),
            },
        }


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as people paste it back into ``--from``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str, option: str, now: datetime) -> datetime:
    """An RFC 3339 time with a zone, ``now``, or ``-30m`` (before ``now``).

    A time without a zone is refused: read as local time it would silently shift the
    whole replay by the host's UTC offset.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    if value.startswith("-"):
        try:
            return now - parse_duration(value[1:])
        except ValueError as exc:
            raise BacktestError(f"{option}: {text!r} is not a relative time: {exc}") from None
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        raise BacktestError(
            f"{option}: {text!r} is not a time: use RFC 3339 with a zone "
            "(2024-05-01T10:00:00Z, 2024-05-01T12:00:00+02:00), now, or -30m"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BacktestError(
            f"{option}: {text!r} has no time zone: add Z or an offset such as +02:00 "
            "(a time without one would be read as this host's local time)"
        )
    return moment


def time_range(from_text: str, to_text: str, now: datetime) -> tuple[datetime, datetime]:
    """``--from`` and ``--to`` as times, in order and not in the future."""
    start = parse_time(from_text, "--from", now)
    end = parse_time(to_text, "--to", now)
    if end > now:
        raise BacktestError(
            f"--to: {format_time(end)} is in the future (now is {format_time(now)}): "
            "there is no history to replay there yet"
        )
    if end < start:
        raise BacktestError(f"--to: {format_time(end)} is before --from {format_time(start)}")
    return start, end


def check_times(start: datetime, end: datetime, interval: timedelta) -> list[datetime]:
    """Every evaluation time from ``start`` to ``end`` inclusive, ``interval`` apart."""
    if end < start:
        raise BacktestError(f"--to: {format_time(end)} is before --from {format_time(start)}")
    count = math.floor((end - start) / interval) + 1
    if count > MAX_CHECKS:
        raise BacktestError(
            f"--from/--to: {count} checks at the plan's interval of "
            f"{format_duration(interval)} is more than {MAX_CHECKS}; replay a shorter range"
        )
    return [start + i * interval for i in range(count)]


def backtest_values(
    plan: Plan,
    *,
    service: str,
    canary_version: str,
    stable_version: str,
    overrides: dict[str, str],
) -> dict[str, str]:
    """Template values as ``canary start`` would give them (production, the plan's
    first slots, plan variables with ``--var`` overrides)."""
    check_identifier("--service", service)
    check_identifier("--canary", canary_version)
    check_identifier("--stable", stable_version)
    if canary_version == stable_version:
        raise BacktestError(f"--canary: {canary_version} is also the --stable version")
    for name in overrides:
        if name not in plan.variables:
            declared = ", ".join(plan.variables) or "none"
            raise BacktestError(
                f"--var {name}: the plan does not declare it (declared: {declared})"
            )
    traffic = plan.traffic
    return template_values(
        plan,
        service=service,
        canary_version=canary_version,
        stable_version=stable_version,
        slots=Slots(stable=traffic.stable_server, canary=traffic.canary_server),
        overrides=overrides,
    )


def check_prometheus(provider: MetricsProvider, at: datetime) -> None:
    """Ask one trivial query first: with no Prometheus every check would be an error
    and the replay would report a pause that says nothing about the canary."""
    try:
        provider.instant("vector(1)", at=at)
    except MetricsError as exc:
        raise BacktestError(f"--prometheus: cannot query {exc.url or 'it'}: {exc.reason}") from None


def replayed_criteria(plan: Plan) -> list[Criterion]:
    """The criteria of the production stages (canary, ramp, verify): a backtest watches
    a canary with production traffic, so a soak-only criterion (staging) has no place."""
    production = {s.name for s in plan.stages if not isinstance(s, SoakStage)}
    return [c for c in plan.stop_criteria if c.stages is None or production & set(c.stages)]


def replay(
    plan: Plan,
    provider: MetricsProvider,
    values: dict[str, str],
    start: datetime,
    end: datetime,
) -> Backtest:
    """Measure every stop criterion at each check time and decide as the controller.

    The state carried from check to check is the engine's: breaches, missing-data
    streaks, the last measured baseline per criterion, and whether the rollout is
    paused (a paused canary is still watched and can still trip, but its missing data
    is no longer counted). A rollback ends a real rollout; the replay goes on as if
    nobody had acted on it, so the output shows whether the breach went on, and the
    outcome is the first rollback.
    """
    analysis = plan.analysis
    criteria = replayed_criteria(plan)
    by_name = {c.name: c for c in criteria}
    breaches: dict[str, str | None] = {}
    streaks = Streaks()
    baselines: dict[str, float] = {}
    paused_since: datetime | None = None  # when the controller paused
    waiting_since: datetime | None = None  # the first paused check: the progress deadline's
    deadline_passed = False
    steps = Progress(plan, start)
    checks: list[Check] = []
    for at in check_times(start, end, analysis.interval):
        measurements = []
        for criterion in criteria:
            m = measure(
                criterion,
                provider,
                values,
                analysis.window,
                at,
                previous_baseline=baselines.get(criterion.name),
            )
            measured = m.judgement.details.get("measured_baseline")
            if measured is not None:
                baselines[criterion.name] = measured
            measurements.append(m)
        # As the controller judges one check: an absent failure series next to a
        # criterion counting the canary's requests.
        measurements = absent_failures_with_traffic(criteria, measurements)

        breaches, trips = update_breaches(breaches, measurements, by_name, at)
        if trips:
            decision = _rollback(trips)
        elif paused_since is not None:
            # The engine's watch of a paused rollout: trips, then the progress deadline.
            waiting_since = waiting_since or at
            waited = at - waiting_since
            if not deadline_passed and waited >= analysis.progress_deadline:
                deadline_passed = True
                why = (
                    f"paused with the canary's traffic for {format_duration(waited)} "
                    f"(progress deadline {format_duration(analysis.progress_deadline)})"
                )
                if analysis.on_progress_deadline == "rollback":
                    decision = Decision(Action.ROLLBACK, f"{why}; plan policy: roll back")
                else:
                    decision = Decision(Action.PAUSE, f"{why}; plan policy: notify")
            else:
                decision = Decision(
                    Action.PAUSE,
                    f"paused since {format_time(paused_since)}, still watched: "
                    + _verdicts(measurements),
                )
        else:
            streaks, why = missing_data_streaks(streaks, measurements, analysis)
            if why is not None and analysis.on_limit == OnLimit.ROLLBACK:
                decision = Decision(Action.ROLLBACK, f"{why}; plan policy: roll back")
            elif why is not None:
                paused_since = at
                decision = Decision(Action.PAUSE, f"{why}; plan policy: pause for a human")
            elif all(m.verdict == Verdict.PASS for m in measurements):
                decision = Decision(Action.CONTINUE, "every criterion passed")
            else:
                decision = Decision(
                    Action.HOLD, _hold_reason(measurements, breaches, streaks, plan, at)
                )
        step = steps.label
        promoted_to = steps.after(decision, at)
        checks.append(Check(at, measurements, decision, step, promoted_to))

    return Backtest(
        plan=plan.name,
        service=values["service"],
        canary_version=values["canary_version"],
        stable_version=values["stable_version"],
        start=start,
        end=end,
        interval=analysis.interval,
        checks=checks,
        outcome=_outcome(checks),
    )


class Progress:
    """The plan's production steps over the replay, as the engine would take them: a
    check where every criterion passes once the step's hold is over promotes. Nothing
    moves after a pause, a rollback or the success (a real rollout stops there)."""

    def __init__(self, plan: Plan, start: datetime):
        self.steps = [s for s in plan.steps() if s.kind != "soak"]
        self.index = 0
        self.started = start
        self.stopped = not self.steps

    @property
    def label(self) -> str:
        return self.steps[self.index].label if self.steps else ""

    def after(self, decision: Decision, at: datetime) -> str | None:
        """Where this check's decision takes the rollout: the next step, ``succeeded``,
        or None when it stays where it is."""
        if self.stopped:
            return None
        if decision.action in (Action.PAUSE, Action.ROLLBACK):
            self.stopped = True
            return None
        step = self.steps[self.index]
        if decision.action != Action.CONTINUE or at < self.started + step.hold:
            return None
        if self.index + 1 == len(self.steps):
            self.stopped = True
            return SUCCEEDED
        self.index += 1
        self.started = at
        return self.steps[self.index].label


def _rollback(trips: list[Trip]) -> Decision:
    """The engine's trip: the first criterion that tripped is the one named."""
    first = trips[0]
    sustained = format_duration(first.criterion.sustained_for)
    return Decision(
        Action.ROLLBACK,
        f"{first.criterion.name} failing for {format_duration(first.lasted)} "
        f"(sustained_for {sustained}): {first.measurement.judgement.reason}",
        criterion=first.criterion.name,
        tripped=[t.criterion.name for t in trips],
    )


def _verdicts(measurements: list[Measurement]) -> str:
    return ", ".join(f"{m.criterion}={m.verdict.value}" for m in measurements)


def _hold_reason(
    measurements: list[Measurement],
    breaches: dict[str, str | None],
    streaks: Streaks,
    plan: Plan,
    at: datetime,
) -> str:
    """Why the controller waits: each breach not yet sustained, each missing-data streak."""
    parts = []
    by_name = {c.name: c for c in plan.stop_criteria}
    for m in measurements:
        since = breaches.get(m.criterion)
        if since is None or m.verdict == Verdict.PASS:
            continue
        lasted = format_duration(at - datetime.fromisoformat(since))
        if m.verdict == Verdict.FAIL:
            sustained = format_duration(by_name[m.criterion].sustained_for)
            parts.append(
                f"{m.criterion} failing for {lasted}, not yet its sustained_for {sustained}"
            )
        else:
            parts.append(
                f"the breach of {m.criterion} goes on ({lasted} so far): an {m.verdict.value} "
                "check neither ends nor confirms it"
            )
    for verdict, count, limit in (
        (Verdict.INCONCLUSIVE, streaks.inconclusive, plan.analysis.inconclusive_limit),
        (Verdict.ERROR, streaks.error, plan.analysis.error_limit),
    ):
        names = [m.criterion for m in measurements if m.verdict == verdict]
        if names:
            parts.append(
                f"{', '.join(names)} {verdict.value} ({count} of {limit} checks in a row "
                "before on_limit)"
            )
    return "; ".join(parts) or "not every criterion passed"


def _outcome(checks: list[Check]) -> Outcome:
    """The success when it came before any rollback or pause; else the first rollback;
    else the first pause; else how the last check stood."""
    success = next((c for c in checks if c.promoted_to == SUCCEEDED), None)
    if success is not None:
        return _success(checks, success)
    for action in (Action.ROLLBACK, Action.PAUSE):
        first = next((c for c in checks if c.decision.action == action), None)
        if first is None:
            continue
        reason = first.decision.reason
        paused = next((c for c in checks if c.decision.action == Action.PAUSE), None)
        if action == Action.ROLLBACK and paused is not None and paused.at < first.at:
            reason += f" (paused at {format_time(paused.at)} before: {paused.decision.reason})"
        return Outcome(action, first.at, reason, first.decision.criterion, first.step)
    last = checks[-1]
    promoted = _promotions(checks)
    if last.decision.action == Action.CONTINUE:
        return Outcome(
            Action.CONTINUE,
            None,
            f"every criterion passing at the end ({format_time(last.at)}){promoted}",
            step=last.promoted_to or last.step,
        )
    return Outcome(Action.HOLD, last.at, last.decision.reason + promoted, step=last.step)


def _success(checks: list[Check], success: Check) -> Outcome:
    """Every step's hold passed: the rollout would have ended there. A criterion that
    trips afterwards is said too, since the controller no longer watches it then."""
    reason = f"every step's hold over with every criterion passing{_promotions(checks)}"
    later = next((c for c in checks if c.at > success.at and c.decision.criterion), None)
    if later is not None:
        reason += (
            f"; after it, {later.decision.criterion} would have tripped at "
            f"{format_time(later.at)} with nothing watching the finished rollout"
        )
    return Outcome(Action.CONTINUE, None, reason, step=success.step, succeeded_at=success.at)


def _promotions(checks: list[Check]) -> str:
    moves = [f"{c.promoted_to} at {format_time(c.at)}" for c in checks if c.promoted_to]
    return f" (promoted: {', '.join(moves)})" if moves else ""


def report_lines(result: Backtest) -> list[str]:
    """The human rendering: a line per check with its decision, a line per criterion,
    and the outcome last."""
    lines = [
        f"backtest of plan {result.plan} for {result.service}: canary "
        f"{result.canary_version} vs stable {result.stable_version}, "
        f"{format_time(result.start)} to {format_time(result.end)}, "
        f"every {format_duration(result.interval)} ({len(result.checks)} checks)"
    ]
    width = max((len(m.criterion) for c in result.checks for m in c.measurements), default=0)
    for check in result.checks:
        promoted = f" -> {check.promoted_to}" if check.promoted_to else ""
        lines.append(
            f"{format_time(check.at)}  [{check.step}{promoted}] "
            f"{check.decision.action.value}: {check.decision.reason}"
        )
        for m in check.measurements:
            lines.append(f"    {m.criterion:<{width}}  {m.verdict.value:<12}  {m.judgement.reason}")
    lines.append(f"outcome: {result.outcome.sentence()}")
    return lines
