"""How long one advance of a plan can take, checked when the plan loads.

Every check of an advance runs inside one Celery task, which is stopped at its soft
time limit. Checks that could add up past it would end the task before anything is
recorded, every time: the step would be tried again and again and never decided.
So a plan is refused when the configured timeouts of what one advance does could
add up past ``STEP_BUDGET_SECONDS`` (``controller.timeouts``); the settings make
sure the soft time limit is above that budget.

What one advance does, as the engine runs it:

* the preflight gates, in an advance of their own when the plan has any that take
  time (HTTP checks, commands, Prometheus queries);
* the first advance of a step: the soak's first load burst (one second's worth);
* the advances of a step until its smoke suite has run: as many of its checks as
  fit beside the rest of the advance's work, at least one (``smoke_allowance``), so
  a suite longer than one advance is spread over several and only its longest check
  counts here;
* every advance: the soak's healthchecks and a load burst (up to
  ``MAX_BURST_SECONDS`` worth), every stop criterion that applies to the stage,
  the exit checks at the end of a hold (``alerts_quiet``, ``backlog``), the slots'
  version check, and at the last step the redeploy hook.

An HTTP check counts its timeout (or its ``max_latency`` when smaller), a command
its timeout, a load burst its worst case (``controller.soak``). A Prometheus query
counts ``QUERY_ALLOWANCE_SECONDS``: the settings' timeout and attempts are not known
when a plan loads, and a healthy Prometheus answers well within it. A Prometheus
slower than that can still use up a task's time; that advance is then recorded as
an error and decides nothing (``controller.engine.advance``).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller import soak
from controller.checks import check_seconds, smoke_checks, wait_seconds
from controller.hooks import hook_seconds
from controller.plan import (
    CommandCheck,
    HttpCheck,
    Plan,
    SlotMode,
    SoakStage,
    Step,
    VerifyStage,
)
from controller.timeouts import STEP_BUDGET_SECONDS

QUERY_ALLOWANCE_SECONDS = 1.0  # what one Prometheus query counts for in the budget
SMOKE = "longest smoke check"

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Work:
    """One part of an advance: what it is, the plan field that configures it, its
    worst case in seconds, and what to change when it is too long."""

    what: str
    loc: Loc
    seconds: float
    hint: str


def gates_work(plan: Plan) -> list[Work]:
    """The preflight gates' advance; empty when no gate takes time (approvals only)."""
    gates = plan.gates
    work = []
    if gates.http:
        work.append(_http("HTTP checks", ("gates", "http"), gates.http))
    if gates.commands:
        work.append(_commands("commands", ("gates", "commands"), gates.commands))
    queries = len(gates.targets_up) + (1 if gates.no_firing_alerts else 0)
    if queries:
        loc: Loc = ("gates", "targets_up") if gates.targets_up else ("gates", "no_firing_alerts")
        work.append(_queries(queries, loc, "use fewer Prometheus gates"))
    return work


def step_work(plan: Plan, step: Step, first: bool) -> list[Work]:
    """Everything one advance of ``step`` can do: its first advance, or any later one."""
    index = next(i for i, s in enumerate(plan.stages) if s.name == step.stage)
    stage = plan.stages[index]
    here: Loc = ("stages", index)
    work = []
    smoke = getattr(stage, "smoke", None)
    if smoke and (smoke.http or smoke.commands):
        # A suite is spread over as many advances as it needs, at least one check
        # each: only its longest check must fit beside the rest of an advance's work.
        work.append(
            Work(
                SMOKE,
                (*here, "smoke"),
                max(check_seconds(c) for c in smoke_checks(smoke)),
                "shorten its timeout, or move it to CI and gate on its status",
            )
        )
    if isinstance(stage, SoakStage):
        if stage.healthchecks:
            work.append(_http("healthchecks", (*here, "healthchecks"), stage.healthchecks))
        if stage.load is not None:
            worth = 1.0 if first else soak.MAX_BURST_SECONDS
            burst = soak.worst_case_seconds(int(stage.load.rate * worth))
            work.append(Work("load burst", (*here, "load"), burst, "lower its rate"))
    criteria = plan.criteria_for(step.stage)
    queries = sum(len(c.queries()) for c in criteria)
    if queries:
        work.append(
            _queries(
                queries,
                ("stop_criteria",),
                "let fewer stop criteria apply to this stage (stop_criteria[].stages)",
            )
        )
    work += _exit_checks(stage, here)
    work += _slot_work(plan, last=step.index == len(plan.steps()) - 1)
    return work


def smoke_allowance(plan: Plan, step: Step) -> float:
    """Seconds one advance of ``step`` may spend on its smoke suite: the budget less
    the most the rest of an advance can take. At least one check runs per advance;
    a plan whose longest check does not fit in this is refused when it loads."""
    rest = [
        sum(w.seconds for w in step_work(plan, step, first) if w.what != SMOKE)
        for first in (True, False)
    ]
    return STEP_BUDGET_SECONDS - max(rest)


def budget_problems(plan: Plan) -> list[tuple[Loc, str]]:
    """Each advance of the plan that could take longer than the budget, named by the
    field that takes most of it."""
    problems = []
    gates = gates_work(plan)
    if _total(gates) > STEP_BUDGET_SECONDS:
        problems.append(_problem("the preflight gates", gates))
    seen: set[str] = set()
    for step in plan.steps():
        if step.stage in seen:
            continue  # the steps of a ramp do the same work: one message per stage
        worst = max(
            (step_work(plan, step, first=True), step_work(plan, step, first=False)), key=_total
        )
        if _total(worst) > STEP_BUDGET_SECONDS:
            seen.add(step.stage)
            problems.append(_problem(f"the checks of step {step.label!r}", worst))
    return problems


def _problem(subject: str, work: list[Work]) -> tuple[Loc, str]:
    biggest = max(work, key=lambda w: w.seconds)
    parts = ", ".join(f"{w.what} {_seconds(w.seconds)}" for w in work if w.seconds)
    return (
        biggest.loc,
        f"{subject} can take {_seconds(_total(work))} in one advance "
        f"({parts}); the budget is {_seconds(STEP_BUDGET_SECONDS)}: {biggest.hint}",
    )


def _exit_checks(stage: object, here: Loc) -> list[Work]:
    """Checks at the end of a hold: firing alerts, and the backlog after a verify."""
    fields = ["alerts_quiet"] if getattr(stage, "alerts_quiet", None) else []
    if isinstance(stage, VerifyStage) and stage.backlog is not None:
        fields.append("backlog")
    if not fields:
        return []
    return [_queries(len(fields), (*here, fields[0]), "use fewer exit checks", "exit checks")]


def _slot_work(plan: Plan, last: bool) -> list[Work]:
    """The slots' version check at every advance, and the redeploy hook at the end."""
    traffic = plan.traffic
    work = []
    if traffic.version_check is not None and traffic.slot_urls:
        seconds = 2 * traffic.version_check.timeout.total_seconds()  # stable and canary
        work.append(
            Work(
                "version check",
                ("traffic", "version_check"),
                seconds,
                "shorten version_check.timeout",
            )
        )
    if last and traffic.mode == SlotMode.REDEPLOY and traffic.redeploy is not None:
        work.append(
            Work(
                "redeploy hook",
                ("traffic", "redeploy"),
                hook_seconds(traffic.redeploy),
                "shorten its timeout: the hook only has to start the deploy",
            )
        )
    return work


def _http(what: str, loc: Loc, checks: list[HttpCheck]) -> Work:
    return Work(
        what, loc, sum(wait_seconds(c) for c in checks), "shorten their timeouts or max_latency"
    )


def _commands(what: str, loc: Loc, commands: list[CommandCheck]) -> Work:
    return Work(
        what,
        loc,
        sum(c.timeout.total_seconds() for c in commands),
        "shorten their timeouts, or move long checks to CI and gate on its status",
    )


def _queries(count: int, loc: Loc, hint: str, what: str = "") -> Work:
    label = what or ("1 Prometheus query" if count == 1 else f"{count} Prometheus queries")
    return Work(label, loc, count * QUERY_ALLOWANCE_SECONDS, hint)


def _total(work: list[Work]) -> float:
    return sum(w.seconds for w in work)


def _seconds(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0") + "s"
