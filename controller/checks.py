"""Go/no-go checks: HTTP checks, commands, Prometheus targets and firing alerts, and
approvals by named owners. Each returns a ``CheckResult`` that says why; none raises,
except when the task runs out of time, which is no verdict (``controller.timeouts``).

Used by the preflight gates, the staging soak's smoke suite and the post-deploy
verification. A check that cannot be evaluated (Prometheus down, a command that
will not start) is a failure: a gate is passed only when it is known to pass.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from controller import timeouts
from controller.analysis.runner import MetricsProvider
from controller.commands import command_environment
from controller.guarded_network import plan_client
from controller.http_client import request_within
from controller.metrics.prometheus import MetricsError
from controller.plan import (
    Backlog,
    CommandCheck,
    Gates,
    HttpCheck,
    Plan,
    SmokeSuite,
    TargetsUp,
    render_template,
)
from controller.redaction import masked_tail


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wait_seconds(check: HttpCheck) -> float:
    """How long an HTTP check waits for its answer: its timeout, or its ``max_latency``
    when smaller, since a later answer fails the check anyway. The plan's time budget
    counts this (``controller.budget``)."""
    limit = check.timeout
    if check.max_latency is not None:
        limit = min(limit, check.max_latency)
    return limit.total_seconds()


def run_http_check(
    check: HttpCheck,
    values: dict[str, str],
    client: httpx.Client,
    at_most: float | None = None,
) -> tuple[bool, str]:
    """One HTTP check: status, optional body text, optional latency bound. It waits
    ``at_most`` seconds when that is less than its own timeout: what is left of the
    time budget of the checks it runs with."""
    url = render_template(check.url, values)
    wait = wait_seconds(check)
    cut = at_most is not None and at_most < wait
    if at_most is not None:
        wait = min(wait, at_most)
    started = time.monotonic()
    try:
        with timeouts.running(f"HTTP check {check.name}"):
            response = request_within(client, check.method, url, wait)
    except timeouts.out_of_time():
        raise  # the task's time is up: no verdict on the check (controller.timeouts)
    except httpx.TimeoutException as exc:
        within = f"{wait:.1f}s, what was left of the budget" if cut else f"{wait:g}s"
        return False, f"{check.name}: no answer within {within} ({type(exc).__name__})"
    except Exception as exc:  # an unusable URL (InvalidURL) fails too
        return False, f"{check.name}: {type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    if response.status_code != check.expect_status:
        return False, f"{check.name}: status {response.status_code}, expected {check.expect_status}"
    if check.body_contains and check.body_contains not in response.text:
        return False, f"{check.name}: body does not contain {check.body_contains!r}"
    if check.max_latency and elapsed > check.max_latency.total_seconds():
        return False, f"{check.name}: took {elapsed * 1000:.0f} ms, limit {check.max_latency}"
    return True, f"{check.name}: {response.status_code} in {elapsed * 1000:.0f} ms"


def run_checks(
    checks: list[HttpCheck], values: dict[str, str], seconds: float | None = None
) -> tuple[bool, str]:
    """Every check, one after the other; all must pass. With ``seconds``, the checks
    share that budget, however many there are: each waits at most what is left of
    it, and a check it leaves no time for is not run and fails, saying so."""
    if not checks:
        return True, "no checks in the plan"
    deadline = None if seconds is None else time.monotonic() + seconds
    results = []
    with plan_client() as client:
        for check in checks:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                results.append((False, f"{check.name}: not run, the {seconds:g}s budget is spent"))
                continue
            results.append(run_http_check(check, values, client, at_most=left))
    return all(ok for ok, _ in results), "; ".join(detail for _, detail in results)


def run_command(check: CommandCheck, values: dict[str, str]) -> CheckResult:
    argv = [render_template(arg, values) for arg in check.command]
    try:
        with timeouts.running(f"command {check.name}"):
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",  # a command's output need not be UTF-8
                check=False,
                timeout=check.timeout.total_seconds(),
                env=command_environment(),
            )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return CheckResult(check.name, "command", False, f"{argv[0]}: {type(exc).__name__}")
    # Masked before the last line is taken and cut (controller.redaction.masked_tail).
    tail = masked_tail((done.stdout + done.stderr).strip()).splitlines()[-1:] or [""]
    return CheckResult(
        check.name,
        "command",
        done.returncode == 0,
        f"exit {done.returncode}" + (f": {tail[0][:200]}" if tail[0] else ""),
    )


def run_http(checks: list[HttpCheck], values: dict[str, str]) -> list[CheckResult]:
    with plan_client() as client:
        return [
            CheckResult(check.name, "http", *run_http_check(check, values, client))
            for check in checks
        ]


def smoke_checks(suite: SmokeSuite) -> list[HttpCheck | CommandCheck]:
    """The checks of a smoke suite in the order they run: HTTP checks, then commands."""
    return [*suite.http, *suite.commands]


def check_seconds(check: HttpCheck | CommandCheck) -> float:
    """The longest one check can take: what the step's time budget counts for it."""
    if isinstance(check, HttpCheck):
        return wait_seconds(check)
    return check.timeout.total_seconds()


def run_smoke_check(check: HttpCheck | CommandCheck, values: dict[str, str]) -> CheckResult:
    if isinstance(check, HttpCheck):
        return run_http([check], values)[0]
    return run_command(check, values)


def targets_up(gate: TargetsUp, metrics: MetricsProvider, values: dict[str, str]) -> CheckResult:
    query = render_template(gate.query, values)
    try:
        with timeouts.running(f"gate {gate.name}"):
            samples = metrics.instant(query)
    except MetricsError as exc:
        return CheckResult(gate.name, "targets_up", False, f"Prometheus: {exc.reason}")
    down = [s.labels.get("instance", str(s.labels)) for s in samples if s.value != 1]
    if len(samples) < gate.min_targets:
        return CheckResult(
            gate.name,
            "targets_up",
            False,
            f"{len(samples)} target(s) found, need {gate.min_targets}",
        )
    if down:
        return CheckResult(gate.name, "targets_up", False, f"down: {', '.join(down)}")
    return CheckResult(gate.name, "targets_up", True, f"{len(samples)} target(s) up")


def no_firing_alerts(
    name: str, query: str, metrics: MetricsProvider, values: dict[str, str]
) -> CheckResult:
    try:
        with timeouts.running(f"check {name}"):
            samples = metrics.instant(render_template(query, values))
    except MetricsError as exc:
        return CheckResult(name, "alerts", False, f"Prometheus: {exc.reason}")
    firing = sorted({s.labels.get("alertname", "?") for s in samples if s.value})
    if firing:
        return CheckResult(name, "alerts", False, f"firing: {', '.join(firing)}")
    return CheckResult(name, "alerts", True, "no alert firing")


def backlog(check: Backlog, metrics: MetricsProvider, values: dict[str, str]) -> CheckResult:
    try:
        with timeouts.running("check backlog"):
            samples = metrics.instant(render_template(check.query, values))
    except MetricsError as exc:
        return CheckResult("backlog", "backlog", False, f"Prometheus: {exc.reason}")
    if len(samples) != 1:
        return CheckResult(
            "backlog", "backlog", False, f"query returned {len(samples)} series, expected one"
        )
    value = samples[0].value
    ok = value == value and value <= check.max  # NaN is never under the limit
    return CheckResult("backlog", "backlog", ok, f"{value:.3g} vs limit {check.max:g}")


def missing_approvals(
    plan: Plan, roles: list[str], approvals: list[dict[str, Any]], gate: str
) -> list[str]:
    """Roles still without an approval by one of their named owners for ``gate``.

    A person counts in one role per rollout, the first they approved in (``approvals``
    in the order given): two roles always mean two people, even if the store holds
    two approvals by one name (written before that rule was enforced under a lock)."""
    first_role: dict[str, str] = {}
    for approval in approvals:
        first_role.setdefault(approval["name"], approval["role"])
    given = {
        (a["role"], a["name"])
        for a in approvals
        if a.get("gate") == gate and first_role.get(a["name"]) == a["role"]
    }
    return [
        role
        for role in roles
        if not any((role, person) in given for person in plan.owners.get(role, []))
    ]


def preflight(gates: Gates, metrics: MetricsProvider, values: dict[str, str]) -> list[CheckResult]:
    """Every automatic preflight gate (approvals are checked by the engine)."""
    results = [targets_up(g, metrics, values) for g in gates.targets_up]
    results += run_http(gates.http, values)
    if gates.no_firing_alerts:
        results.append(
            no_firing_alerts("no-firing-alerts", gates.no_firing_alerts, metrics, values)
        )
    results += [run_command(c, values) for c in gates.commands]
    return results
