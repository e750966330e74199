"""``canary``: start, watch and stop rollouts; run the worker, beat and the demo.

Errors a person can fix (a bad plan, a bad flag, unusable settings) are printed as
one clear message and exit 2, never as a traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from functools import wraps
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from sqlalchemy.exc import OperationalError

from config.settings import SettingsError, get_settings
from controller.api_client import ApiClient, ApiRefused, ApiUnavailable
from controller.backtest import (
    BacktestError,
    backtest_values,
    check_prometheus,
    replay,
    report_lines,
    time_range,
)
from controller.durations import format_duration, parse_duration
from controller.exit_codes import ExitCode, for_http_status, table
from controller.lab.errors import LabError
from controller.metrics.prometheus import PrometheusProvider, RetryPolicy, redact_url
from controller.operations import (
    OperationConflict,
    OperationError,
    OperationOutcome,
    OperationUnavailable,
    abort_rollout,
    approve_rollout,
    check_identifier,
    pause_rollout,
    promote_rollout,
    recheck_rollout,
    record_reconciliation,
    resolve_rollout,
    resume_rollout,
    rollback_rollout,
    start_rollout,
)
from controller.plan import plan_json_schema
from controller.plan_checks import (
    SAMPLE_CANARY_VERSION,
    SAMPLE_SERVICE,
    SAMPLE_STABLE_VERSION,
    PlanQuery,
    absent_series_meanings,
    check_queries,
    plan_queries,
    sample_values,
)
from controller.plan_loader import PlanError, load_plan, parse_plan, read_plan_text
from controller.plan_registry import find_plan, list_plans, plan_view, register_plan
from controller.reconcile.stalled import rollout_note
from controller.render import detail_view, history_table, incident_view, rollout_table
from controller.retention import prune_measurements
from controller.runbook import find_incident
from controller.runtime import router_factory, utcnow
from controller.store import repository
from controller.store.db import migrate, session_factory
from controller.url_policy import HostPolicy
from controller.views import DetailFollower, event_view, rollout_summary

app = typer.Typer(
    no_args_is_help=True,
    help="Canary rollouts judged by Prometheus, driven by Celery workers.",
    epilog="Exit codes:\n\n" + table().replace("\n", "\n\n"),
)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON; an error as JSON on stderr")]


def _version(show: bool) -> None:
    if show:
        print(f"canary {package_version('canary-controller')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """Canary rollouts judged by Prometheus, driven by Celery workers."""


plan_app = typer.Typer(no_args_is_help=True, help="Work with plan files.")
db_app = typer.Typer(no_args_is_help=True, help="The state store.")
app.add_typer(plan_app, name="plan")
incident_app = typer.Typer(no_args_is_help=True, help="Incidents opened by rollbacks.")
app.add_typer(db_app, name="db")
app.add_typer(incident_app, name="incident")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors people can act on into a message on stderr (JSON with
    ``--json``) and the exit code of the table (``controller.exit_codes``)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (
            SettingsError,
            OperationError,
            LabError,
            PlanError,
            OperationalError,
            ApiRefused,
            ApiUnavailable,
        ) as exc:
            code, message = _classify(exc)
            _fail(code, message, as_json=bool(kwargs.get("as_json")), problems=_problems(exc))

    return wrapper


def _classify(exc: Exception) -> tuple[ExitCode, str]:
    """The exit code of an error, and what to say."""
    if isinstance(exc, OperationalError):
        return ExitCode.UNAVAILABLE, f"cannot use the database: {exc.orig}"
    if isinstance(exc, ApiRefused):
        return for_http_status(exc.status), f"the API refused ({exc.status}): {exc}"
    if isinstance(exc, ApiUnavailable):
        return ExitCode.UNAVAILABLE, str(exc)
    if isinstance(exc, PlanError):
        return ExitCode.BAD_INPUT, f"plan is not valid ({len(exc.problems)} problem(s)):\n{exc}"
    if isinstance(exc, LabError):
        return ExitCode.UNAVAILABLE, str(exc)
    if isinstance(exc, OperationError) and str(exc).startswith("id: no "):
        return ExitCode.NOT_FOUND, str(exc)
    if isinstance(exc, OperationConflict):
        return ExitCode.REFUSED, str(exc)  # as the API's 409: another rollout is active
    if isinstance(exc, OperationUnavailable):
        return ExitCode.UNAVAILABLE, str(exc)  # as the API's 503: the router is unreachable
    return ExitCode.BAD_INPUT, str(exc)


def _problems(exc: Exception) -> list[dict[str, Any]] | None:
    if isinstance(exc, PlanError):
        return [{"path": p.path, "line": p.line, "message": p.message} for p in exc.problems]
    return None


def _fail(
    code: ExitCode,
    message: str,
    as_json: bool = False,
    problems: list[dict[str, Any]] | None = None,
) -> None:
    """Say what went wrong on stderr and exit with ``code``."""
    if as_json:
        error: dict[str, Any] = {"code": int(code), "kind": code.name.lower(), "message": message}
        if problems is not None:
            error["problems"] = problems
        print(json.dumps({"error": error}), file=sys.stderr)
    else:
        err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(int(code))


def _sessions():
    url = get_settings().database_url
    migrate(url)
    return session_factory(url)


@plan_app.command("register")
@friendly_errors
def plan_register(
    plan: Annotated[Path, typer.Argument(help="Plan YAML file")],
    name: Annotated[
        str | None, typer.Option(help="Name to start it by (default: the plan's name field)")
    ] = None,
    note: Annotated[str, typer.Option(help="What changed, kept with the version")] = "",
) -> None:
    """Register a plan by name, as its next version (who and when are kept). Operators
    start rollouts from registered plans; the API accepts no inline plan from them.
    The registrant is who you are: the API token's name with CANARY_API_URL and
    CANARY_TOKEN set (an admin's), else your OS login name (direct database access)."""
    source = read_plan_text(plan)
    name = name or parse_plan(source, source=str(plan)).name
    client = _api_client()
    if client is not None:
        view = client.call(
            "POST", "/api/v1/plans", {"name": name, "plan_yaml": source, "note": note}
        )
    else:
        registrant = _os_user()
        with _sessions()() as session:
            row, _ = register_plan(
                session, name, source, registered_by=registrant, now=utcnow(), note=note
            )
            view = plan_view(row)
    out.print(
        f"plan {view['name']} v{view['version']} registered by {view['registered_by']} "
        f"at {view['registered_at']} ({view['digest'][:12]})",
        markup=False,
    )


@plan_app.command("list")
@friendly_errors
def plan_list() -> None:
    """The latest version of every registered plan."""
    with _sessions()() as session:
        rows = list_plans(session)
    if not rows:
        out.print("no registered plans (canary plan register FILE)", markup=False)
    for row in rows:
        out.print(
            f"{row['name']} v{row['version']} by {row['registered_by']} at "
            f"{row['registered_at']} {row['note']}".rstrip(),
            markup=False,
        )


@plan_app.command("schema")
@friendly_errors
def plan_schema() -> None:
    """Print the JSON Schema of a plan file, for editors (e.g. the YAML language
    server: ``# yaml-language-server: $schema=plan.schema.json`` at the top of a plan).
    It checks shapes and types; ``canary plan validate`` checks everything."""
    print(json.dumps(plan_json_schema(), indent=2))


@plan_app.command("validate")
@friendly_errors
def plan_validate(
    plan: Annotated[Path, typer.Argument(help="Plan YAML file")],
    check_against: Annotated[
        str | None,
        typer.Option(
            "--check-against",
            metavar="URL",
            help="Then run each PromQL query of the plan once, as an instant query, against "
            "the Prometheus at URL and report it ok, empty or failing. Empty (no series) is "
            "a warning, the exit code stays 0; any failing query exits 1.",
        ),
    ] = None,
    service: Annotated[
        str, typer.Option(help="With --check-against: the service to render queries for")
    ] = SAMPLE_SERVICE,
    version: Annotated[
        str, typer.Option(help="With --check-against: the canary version")
    ] = SAMPLE_CANARY_VERSION,
    stable: Annotated[
        str, typer.Option(help="With --check-against: the stable version")
    ] = SAMPLE_STABLE_VERSION,
    var: Annotated[
        list[str] | None,
        typer.Option(help="With --check-against: a plan variable, name=value (repeatable)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a plan file; report every problem with its field path and line.

    Every PromQL query is parsed (rendered with sample values) and every alert
    matcher is parsed with Alertmanager's grammar, as when a rollout starts. Then
    what each stop criterion will decide when a query returns no series."""
    loaded = load_plan(plan)
    steps = loaded.steps()
    absent = absent_series_meanings(loaded)
    report: dict[str, Any] = {
        "file": str(plan),
        "name": loaded.name,
        "valid": True,
        "steps": [
            {"index": step.index, "label": step.label, "hold": format_duration(step.hold)}
            for step in steps
        ],
        "stop_criteria": [c.name for c in loaded.stop_criteria],
        "absent_series": [
            {"criterion": a.criterion, "meaning": a.meaning, "warning": a.warning} for a in absent
        ],
    }
    if not as_json:
        out.print(
            f"{plan}: plan {loaded.name!r} is valid: {len(steps)} steps, "
            f"{len(loaded.stop_criteria)} stop criteria",
            markup=False,
        )
        for step in steps:
            out.print(
                f"  {step.index + 1}. {step.label:<24} hold {format_duration(step.hold)}",
                markup=False,
            )
        if absent:
            out.print("when a query returns no series:", markup=False)
        for a in absent:
            note = " (warning)" if a.warning else ""
            out.print(f"  {a.criterion}: {a.meaning}{note}", markup=False, highlight=False)
    failing = False
    if check_against is not None:
        overrides = _variables(var)
        undeclared = sorted(set(overrides) - set(loaded.variables))
        if undeclared:
            raise OperationError(
                f"var: the plan does not declare {', '.join(undeclared)} "
                f"(declared: {', '.join(loaded.variables) or 'none'})"
            )
        for name, value in (("service", service), ("version", version), ("stable", stable)):
            check_identifier(name, value)
        values = sample_values(
            loaded,
            service=service,
            canary_version=version,
            stable_version=stable,
            overrides=overrides,
        )
        results = _check_queries(check_against, plan_queries(loaded, values))
        failing = any(r.status == "failing" for r in results)
        report["queries"] = [
            {
                "path": r.query.path,
                "owner": r.query.owner,
                "status": r.status,
                "detail": r.detail,
                "query": r.query.text,
            }
            for r in results
        ]
        if not as_json:
            _print_checks(check_against, results)
    if as_json:
        print(json.dumps(report, indent=2))
    if failing:
        raise typer.Exit(int(ExitCode.REFUSED))


def _check_queries(url: str, queries: list[PlanQuery]) -> list[Any]:
    """What Prometheus answers to each query (ok, empty or failing)."""
    try:
        prometheus = PrometheusProvider(url, timeout_seconds=5.0, retry=RetryPolicy(attempts=1))
    except ValueError as exc:
        raise OperationError(f"check-against: {exc}") from None
    with prometheus:
        return check_queries(queries, prometheus)


def _print_checks(url: str, results: list[Any]) -> None:
    out.print(
        f"checked {len(results)} queries against {redact_url(url)}:", markup=False, highlight=False
    )
    for result in results:
        owner = f" ({result.query.owner})" if result.query.owner else ""
        note = " (warning)" if result.status == "empty" else ""
        out.print(
            f"  {result.status:<8} {result.query.path}{owner}: {result.detail}{note}",
            markup=False,
            highlight=False,
        )
        if result.status == "failing":
            out.print(f"           query: {result.query.text}", markup=False, highlight=False)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "empty", "failing")}
    out.print(
        f"{len(results)} queries: {counts['ok']} ok, {counts['empty']} empty (warning), "
        f"{counts['failing']} failing",
        markup=False,
        highlight=False,
    )


@db_app.command("upgrade")
@friendly_errors
def db_upgrade() -> None:
    """Create or migrate the store's schema (Alembic) to the newest revision."""
    migrate(get_settings().database_url)
    out.print("database schema is up to date")


@db_app.command("prune")
@friendly_errors
def db_prune(
    older_than: Annotated[
        str, typer.Option(help="Rollouts finished longer ago than this, e.g. 90d")
    ] = "90d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, change nothing")] = False,
) -> None:
    """Summarise the measurement events of long-finished rollouts (one event each with
    their counts) and remove them; every other event stays."""
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise OperationError(f"older-than: {exc}") from None
    with _sessions()() as session:
        pruned = prune_measurements(session, age, utcnow(), dry_run=dry_run)
    out.print(pruned.sentence(dry_run), markup=False, highlight=False)


@app.command()
@friendly_errors
def start(
    plan: Annotated[str, typer.Argument(help="Plan YAML file, or the name of a registered plan")],
    service: Annotated[str, typer.Option(help="Service to roll out")],
    version: Annotated[str, typer.Option(help="New (canary) version")],
    stable: Annotated[
        str | None, typer.Option(help="Stable version; default: the last version that succeeded")
    ] = None,
    var: Annotated[
        list[str] | None, typer.Option(help="A plan variable, name=value (repeatable)")
    ] = None,
    force: Annotated[
        str | None,
        typer.Option(
            help="Start although the router or the stable version is not what the store "
            "expects; the reason is recorded"
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Follow it to the end; exit 0 if it succeeded, 1 if it was rolled back or aborted",
        ),
    ] = False,
    interval: Annotated[float, typer.Option(help="Refresh interval of --wait, seconds")] = 2.0,
    as_json: JsonFlag = False,
) -> None:
    """Start a rollout; prints its id. Workers pick it up within seconds.

    It starts only when the router gives the stable slot all traffic and the other
    slot none, and the stable version is the one the store records."""
    rollout_id, stalled = _start(plan, service, version, stable, var, force)
    if stalled and not as_json:
        err.print(f"warning: {rollout_id} {stalled}", markup=False, highlight=False)
    if not wait:
        print(json.dumps({"id": rollout_id, "stalled": stalled}) if as_json else rollout_id)
        return
    read = _reader(rollout_id)
    final = _watch(read, read(), as_json, max(interval, 0.2))
    if final["state"] != "succeeded":
        _fail(
            ExitCode.REFUSED,
            f"rollout {rollout_id} {final['state']}: {final.get('reason') or ''}".rstrip(),
            as_json=as_json,
        )


def _reader(rollout_id: str, events: int = 15) -> Callable[[], dict[str, Any]]:
    """How to read where a rollout stands: from the API when configured, else from
    the database (only the events since the last read)."""
    client = _api_client()
    if client is not None:
        return lambda: client.call("GET", f"/api/v1/rollouts/{rollout_id}")
    sessions = _sessions()
    follower = DetailFollower(rollout_id, events, _reconcile_interval())

    def read() -> dict[str, Any]:
        with sessions() as session:
            rollout = repository.get_rollout(session, rollout_id)
            if rollout is None:
                raise OperationError(f"id: no rollout {rollout_id!r}")
            return follower.read(session, rollout)

    return read


def _reconcile_interval() -> timedelta:
    """How often beat fires reconcile here: the views say when it has been silent
    for several of these."""
    return timedelta(seconds=get_settings().reconcile_interval_seconds)


def _start(
    plan: str,
    service: str,
    version: str,
    stable: str | None,
    var: list[str] | None,
    force: str | None,
) -> tuple[str, str | None]:
    """Create the rollout (through the API when configured); its id, and why it will
    not move (no reconcile has run for a while), if so."""
    variables = _variables(var)
    client = _api_client()
    if client is not None:
        is_file = Path(plan).exists()
        answer = client.call(
            "POST",
            "/api/v1/rollouts",
            {
                **({"plan_yaml": read_plan_text(Path(plan))} if is_file else {"plan": plan}),
                "service": service,
                "version": version,
                "stable": stable,
                "variables": variables,
                "force": force,
            },
        )
        return str(answer["id"]), answer.get("stalled")
    created_by = _os_user()
    with _sessions()() as session:
        if Path(plan).exists():
            loaded, origin = load_plan(plan), f"file {plan}"
        else:
            found = find_plan(session, plan, get_settings().plans_dir)
            loaded, origin = found.plan, found.origin
        rollout = start_rollout(
            session,
            loaded,
            service=service,
            version=version,
            stable=stable,
            created_by=created_by,
            now=utcnow(),
            router_for=router_factory(get_settings()),
            variables=variables,
            force_reason=force,
            url_policy=HostPolicy.from_setting(get_settings().allowed_url_hosts),
            plan_origin=origin,
        )
        return rollout.id, rollout_note(session, rollout, utcnow(), _reconcile_interval())


def _variables(var: list[str] | None) -> dict[str, str]:
    """``--var name=value`` options as a dict (the plan checks the names)."""
    variables = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise OperationError(f"var: {item!r} is not name=value")
        variables[name] = value
    return variables


@app.command()
@friendly_errors
def backtest(
    plan: Annotated[Path, typer.Argument(help="Plan YAML file")],
    service: Annotated[str, typer.Option(help="Service whose history to replay")],
    canary: Annotated[str, typer.Option(help="Canary version")],
    stable: Annotated[str, typer.Option(help="Stable version (the baseline)")],
    from_: Annotated[str, typer.Option("--from", help="Start: RFC 3339 with a zone, now, or -30m")],
    to: Annotated[str, typer.Option("--to", help="End: RFC 3339 with a zone, now, or -5m")] = "now",
    var: Annotated[
        list[str] | None, typer.Option(help="A plan variable, name=value (repeatable)")
    ] = None,
    prometheus: Annotated[
        str | None, typer.Option(help="Prometheus base URL; default: CANARY_PROMETHEUS_URL")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document")] = False,
) -> None:
    """Replay the plan's stop criteria over past Prometheus data: each check's verdicts
    and the decision the controller would have taken, then when it would have rolled
    back, paused, or let the canary continue. Changes nothing."""
    loaded = load_plan(plan)
    values = backtest_values(
        loaded,
        service=service,
        canary_version=canary,
        stable_version=stable,
        overrides=_variables(var),
    )
    start_at, end_at = time_range(from_, to, utcnow().replace(microsecond=0))
    settings = get_settings()
    try:
        provider = PrometheusProvider(
            prometheus or settings.prometheus_url,
            timeout_seconds=settings.prometheus_timeout_seconds,
            retry=RetryPolicy(attempts=settings.prometheus_attempts),
        )
    except ValueError as exc:
        raise BacktestError(f"--prometheus: {exc}") from None
    with provider:
        check_prometheus(provider, end_at)
        result = replay(loaded, provider, values, start_at, end_at)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        for line in report_lines(result):
            out.print(line, markup=False, highlight=False)


@app.command()
@friendly_errors
def status(
    rollout_id: Annotated[
        str | None, typer.Argument(help="Rollout id; all recent ones if omitted")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    events: Annotated[int, typer.Option(help="How many recent events to show")] = 15,
    watch: Annotated[bool, typer.Option("--watch", help="Follow it live until it ends")] = False,
    interval: Annotated[float, typer.Option(help="Refresh interval of --watch, seconds")] = 1.0,
) -> None:
    """Show rollouts, or one rollout: where it stands, criteria against limits, events."""
    if rollout_id is None and watch:
        raise OperationError("id: --watch follows one rollout; give its id")
    if rollout_id is None:
        with _sessions()() as session:
            rows = [rollout_summary(r) for r in repository.list_rollouts(session)]
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            out.print(rollout_table(rows))
        return

    read = _reader(rollout_id, events)
    detail = read()
    if not watch:
        if as_json:
            print(json.dumps(detail, indent=2))
        else:
            out.print(detail_view(detail))
        return
    _watch(read, detail, as_json, max(interval, 0.2))


FINAL = ("succeeded", "rolled_back", "aborted")


def _watch(
    read: Callable[[], dict[str, Any]], detail: dict[str, Any], as_json: bool, interval: float
) -> dict[str, Any]:
    """Follow the rollout until it ends; its last detail. On a terminal the view is
    redrawn in place; with --json, or when stdout is not a terminal (CI logs, ssh
    pipes, files), one line is printed per change instead."""
    live_view = not as_json and out.is_terminal
    last = None
    with (
        Live(detail_view(detail), console=out, auto_refresh=False, transient=False)
        if live_view
        else nullcontext() as live
    ):
        while True:
            if live_view:
                live.update(detail_view(detail), refresh=True)
            else:
                line = json.dumps(detail) if as_json else progress_line(detail)
                if line != last:
                    print(line, flush=True)
                    last = line
            if detail["state"] in FINAL:
                return detail
            time.sleep(interval)
            detail = read()


def progress_line(detail: dict[str, Any]) -> str:
    """One line of where a rollout stands, for logs: printed when it changes."""
    current = next((s["label"] for s in detail["steps"] if s["status"] == "current"), "-")
    latest = detail["events"][-1]["message"] if detail.get("events") else ""
    return (
        f"{detail['id']} {detail['state']} step={current} weight={detail.get('weight')}% {latest}"
    ).rstrip()


@app.command()
@friendly_errors
def history(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """The whole timeline of a rollout: every weight, measurement and decision."""
    with _sessions()() as session:
        if repository.get_rollout(session, rollout_id) is None:
            raise OperationError(f"id: no rollout {rollout_id!r}")
        timeline = [event_view(e) for e in repository.events_for(session, rollout_id)]
    if as_json:
        print(json.dumps(timeline, indent=2))
    else:
        out.print(history_table(timeline))


@app.command()
@friendly_errors
def abort(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")],
    reason: Annotated[str, typer.Option(help="Why (kept in the event log)")] = "manual abort",
    as_json: JsonFlag = False,
) -> None:
    """Stop a rollout and send all traffic back to stable."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/abort",
        {"reason": reason},
        lambda session, actor: abort_rollout(
            session, rollout_id, reason=reason, actor=actor, now=utcnow()
        ),
        as_json=as_json,
    )


@app.command()
@friendly_errors
def rollback(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")],
    reason: Annotated[str, typer.Option(help="Why (kept in the incident)")],
    as_json: JsonFlag = False,
) -> None:
    """Roll back now: traffic to stable, the runbook, an incident."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/rollback",
        {"reason": reason},
        lambda session, actor: rollback_rollout(
            session, rollout_id, reason=reason, actor=actor, now=utcnow()
        ),
        as_json=as_json,
    )


@app.command()
@friendly_errors
def resolve(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id (in rollback_failed)")],
    reason: Annotated[str, typer.Option(help="What was done to traffic, and why (the audit)")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="End it although the controller cannot confirm traffic on stable (admin "
            "through the API); recorded as aborted, traffic NOT confirmed",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """End a rollout stuck in rollback_failed once you fixed traffic by hand: the
    controller reads the router (and the stable slot's version) back first, and
    refuses with what it read unless that is traffic on stable."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/resolve",
        {"reason": reason, "force": force},
        lambda session, actor: resolve_rollout(
            session,
            rollout_id,
            reason=reason,
            actor=actor,
            now=utcnow(),
            router_for=router_factory(get_settings()),
            force=force,
        ),
        enqueue=False,
        as_json=as_json,
    )


@app.command()
@friendly_errors
def pause(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")],
    reason: Annotated[str, typer.Option(help="Why")] = "manual pause",
    as_json: JsonFlag = False,
) -> None:
    """Stop advancing; traffic stays where it is."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/pause",
        {"reason": reason},
        lambda session, actor: pause_rollout(
            session, rollout_id, reason=reason, actor=actor, now=utcnow()
        ),
        enqueue=False,
        as_json=as_json,
    )


@app.command()
@friendly_errors
def resume(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")], as_json: JsonFlag = False
) -> None:
    """Carry on a paused rollout from where it stands."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/resume",
        None,
        lambda session, actor: resume_rollout(session, rollout_id, actor=actor, now=utcnow()),
        enqueue=False,
        as_json=as_json,
    )


@app.command()
@friendly_errors
def approve(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")],
    role: Annotated[str | None, typer.Option(help="Approve only as this role")] = None,
    stage: Annotated[
        str | None,
        typer.Option(help="Gate to approve: preflight or a stage (default: the one it waits at)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Approve the gate a rollout waits at. The approver is who you are, never a name
    typed: the API token's name with CANARY_API_URL and CANARY_TOKEN set, else your
    OS login name (recorded as such)."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/approve",
        {"role": role, "stage": stage},
        lambda session, actor: approve_rollout(
            session,
            rollout_id,
            name=actor,
            role=role,
            gate=stage,
            now=utcnow(),
            via="database (OS user)",
        ),
        enqueue=False,
        as_json=as_json,
    )


@app.command()
@friendly_errors
def recheck(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")], as_json: JsonFlag = False
) -> None:
    """Check a blocked rollout's gates again now."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/recheck",
        None,
        lambda session, actor: recheck_rollout(session, rollout_id, actor=actor, now=utcnow()),
        enqueue=False,
        as_json=as_json,
    )


@app.command("reconcile-done")
@friendly_errors
def reconcile_done(
    service: Annotated[str, typer.Argument(help="The service whose data was reconciled")],
    note: Annotated[str, typer.Option(help="What was reconciled and how (the audit trail)")],
    as_json: JsonFlag = False,
) -> None:
    """Record that a failed-writes rollback's data was reconciled; the service's next
    rollout waits for this."""
    _act(
        f"/api/v1/services/{service}/reconcile-done",
        {"note": note},
        lambda session, actor: record_reconciliation(
            session, service, note=note, actor=actor, now=utcnow()
        ),
        enqueue=False,
        as_json=as_json,
    )


@app.command()
@friendly_errors
def promote(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")],
    reason: Annotated[str, typer.Option(help="Why the hold is cut short")],
    as_json: JsonFlag = False,
) -> None:
    """Skip the rest of the current hold (the criteria must still pass)."""
    _act(
        f"/api/v1/rollouts/{rollout_id}/promote",
        {"reason": reason},
        lambda session, actor: promote_rollout(
            session, rollout_id, actor=actor, reason=reason, now=utcnow()
        ),
        enqueue=False,
        as_json=as_json,
    )


def _api_client() -> ApiClient | None:
    """The API to act through, when CANARY_API_URL is set (it then needs CANARY_TOKEN)."""
    settings = get_settings()
    if settings.api_url is None:
        return None
    if settings.token is None:
        raise OperationError("token: CANARY_API_URL is set but CANARY_TOKEN is not")
    return ApiClient(settings.api_url, settings.token.get_secret_value())


def _os_user() -> str:
    """Who acts on the database directly: the OS login name, and we say so."""
    user = getpass.getuser()
    err.print(
        f"acting on the database as OS user {user}; set CANARY_API_URL and CANARY_TOKEN "
        "to act as your API identity",
        markup=False,
    )
    return user


def _act(
    path: str,
    body: dict[str, Any] | None,
    direct: Callable[[Any, str], OperationOutcome],
    enqueue: bool = True,
    as_json: bool = False,
) -> None:
    """One mutating command: through the API when configured (the API records the
    token's identity and hands rollbacks over itself), else on the database as the
    OS user."""
    client = _api_client()
    if client is not None:
        answer = client.call("POST", path, body)
        _report(
            OperationOutcome(answer["rollout_id"], answer["accepted"], answer["message"]),
            enqueue=False,
            as_json=as_json,
        )
        return
    actor = _os_user()
    with _sessions()() as session:
        _report(direct(session, actor), enqueue=enqueue, as_json=as_json)


@incident_app.command("show")
@friendly_errors
def incident_show(
    incident_id: Annotated[str, typer.Argument(help="Incident id, or a rollout id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show an incident opened by a rollback: trigger, timeline, metrics snapshot."""
    with _sessions()() as session:
        document = find_incident(session, incident_id)
    if document is None:
        raise OperationError(f"id: no incident {incident_id!r}")
    if as_json:
        print(json.dumps(document, indent=2))
        return
    out.print(incident_view(document))


@app.command()
@friendly_errors
def api(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
) -> None:
    """Run the HTTP API (and the Alertmanager webhook) with uvicorn."""
    import uvicorn

    from controller.api.app import create_app
    from tasks.dispatch import enqueue_outbox, enqueue_rollback, enqueue_start

    settings = get_settings()
    migrate(settings.database_url)
    uvicorn.run(
        create_app(settings, enqueue_rollback, enqueue_start, enqueue_outbox),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        log_config=None,  # uvicorn's lines go through our JSON and redaction too
    )


def _report(outcome: OperationOutcome, enqueue: bool = True, as_json: bool = False) -> None:
    """Print what happened (a refusal on stderr, exit 1); hand an accepted rollback
    straight to the rollback queue (the reconcile loop picks it up anyway if the
    broker cannot be reached)."""
    if not outcome.accepted:
        _fail(ExitCode.REFUSED, outcome.message, as_json=as_json)
    if as_json:
        print(json.dumps(_outcome_json(outcome)))
    else:
        out.print(outcome.message, markup=False)
    if enqueue:
        try:
            from tasks.dispatch import enqueue_rollback

            enqueue_rollback(outcome.rollout_id)
        except Exception as exc:  # the database already holds the request
            err.print(
                f"note: could not enqueue directly ({type(exc).__name__}); the "
                "reconcile loop will start the rollback",
                markup=False,
            )


def _outcome_json(outcome: OperationOutcome) -> dict[str, Any]:
    return {
        "rollout_id": outcome.rollout_id,
        "accepted": outcome.accepted,
        "message": outcome.message,
    }


@app.command()
@friendly_errors
def worker(
    queues: Annotated[
        str,
        typer.Option(
            help="all, or a comma-separated list of rollback, reconcile (hands out due "
            "work), rollouts (advances: the checks), runbook, notify"
        ),
    ] = "all",
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 2,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
    metrics_port: Annotated[
        int, typer.Option(help="Serve the worker's /metrics here (0: off)", min=0, max=65535)
    ] = 0,
) -> None:
    """Run a Celery worker (task events on). In production run one worker per queue:
    rollback (its own, always), reconcile, rollouts, runbook and notify."""
    metrics_dir = None
    if metrics_port:
        # Before any task module creates a metric: the prefork children share counters.
        from tasks.metrics import enable_multiprocess

        metrics_dir = enable_multiprocess()
    from tasks.app import QUEUES, queue_name
    from tasks.app import app as celery_app

    kinds = list(QUEUES) if queues == "all" else [q.strip() for q in queues.split(",")]
    unknown = [kind for kind in kinds if kind not in QUEUES]
    if unknown or not kinds:
        raise OperationError(
            f"queues: {', '.join(unknown) or repr(queues)} is not a queue; use all or a "
            f"comma-separated list of {', '.join(QUEUES)}"
        )
    chosen = [queue_name(kind) for kind in kinds]
    argv = [
        "worker",
        "-E",
        "-Q",
        ",".join(chosen),
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    migrate(get_settings().database_url)
    if metrics_dir is not None:
        from tasks.metrics import cleanup, serve

        serve(metrics_port, queues)
    try:
        celery_app.worker_main(argv)
    finally:
        if metrics_dir is not None:
            cleanup(metrics_dir)


@app.command()
@friendly_errors
def beat(
    schedule: Annotated[Path, typer.Option(help="Beat schedule file")] = Path(
        "celerybeat-schedule"
    ),
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run Celery beat: fires rollout.reconcile every CANARY_RECONCILE_INTERVAL_SECONDS."""
    from tasks.app import app as celery_app

    # Beat sends nothing but the reconcile tick, which must not fill Flower's task list
    # (the task itself sends no events either); its health is canary_reconcile_lag_seconds.
    celery_app.conf.task_send_sent_event = False
    # Write the schedule file after every tick sent (not every 3 minutes), so that its
    # age tells how long ago beat last fired: `python -m controller.probe beat`.
    celery_app.conf.beat_sync_every = 1

    celery_app.start(["beat", f"--schedule={schedule}", f"--loglevel={loglevel}"])


@app.command()
@friendly_errors
def flower(
    port: Annotated[int, typer.Option(help="Port of the web UI and API")] = 5555,
    address: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
) -> None:
    """Run Flower on the workers' task events, behind basic auth from the settings."""
    from tasks.app import app as celery_app

    settings = get_settings()
    if not settings.flower_user or settings.flower_password is None:
        raise OperationError(
            "flower: set CANARY_FLOWER_USER and CANARY_FLOWER_PASSWORD; Flower shows every "
            "rollout's tasks and can revoke them, so it never runs without authentication"
        )
    # Through the environment, not argv: a password on the command line shows in `ps`.
    os.environ["FLOWER_BASIC_AUTH"] = (
        f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
    )
    celery_app.start(["flower", f"--port={port}", f"--address={address}"])


@app.command()
@friendly_errors
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line")] = False,
    workdir: Annotated[Path | None, typer.Option(help="Keep the lab's files here")] = None,
) -> None:
    """Run the whole lab locally: two healthy releases to 100 % (the slots swap) and a
    faulty one rolled back (production stays on the last stable slot)."""
    from controller.demo.runner import EXPECTED, run_demo

    result = run_demo(workdir=workdir, console=err if as_json else out)
    if as_json:
        print(json.dumps(result))
    if [(r["state"], r["stable_slot"]) for r in result["rollouts"]] != EXPECTED:
        raise typer.Exit(1)


@app.command("demo-service")
def demo_service(
    port: Annotated[int, typer.Option()],
    service: Annotated[str, typer.Option()] = "checkout",
    version: Annotated[str, typer.Option()] = "1.0.0",
    environment: Annotated[str, typer.Option()] = "production",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
) -> None:
    """Run the demo service (one version, with fault knobs at /admin/faults)."""
    from controller.demo.service import serve

    serve(port=port, service=service, version=version, environment=environment, host=host)


@app.command("demo-load")
def demo_load(
    target: Annotated[
        list[str], typer.Option(help="URL=RPS: GET the URL this many times a second (repeatable)")
    ],
) -> None:
    """Send steady synthetic traffic to the demo service, so its canary has requests to be
    judged on (stops on SIGTERM and prints the counts as JSON)."""
    from controller.demo.loadgen import main as loadgen

    code = loadgen([arg for value in target for arg in ("--target", value)])
    if code:
        raise typer.Exit(code)


def main() -> None:
    from controller.logging import configure_logging

    try:
        configure_logging(get_settings().log_json)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    app()
