"""Checks of what a plan says inside its strings: PromQL and Alertmanager matchers.

Pydantic can only see that a query is a non-empty template with known variables; a
missing bracket would still load, and the first check of a rollout would be a
Prometheus ``bad_data`` error, counted against ``error_limit`` while traffic moves.
So every PromQL expression is rendered with harmless sample values (the plan's own
variable defaults, sample builtins, its real windows) and parsed with the Prometheus
grammar before anything moves. Alert matchers are parsed with Alertmanager's grammar,
and ``controller.alerts`` matches with the same parsed form, so what validates is
exactly what matches.

Everything here is pure except ``check_queries``, which asks a Prometheus it is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

import promql_parser

from controller import promql_shape
from controller.durations import format_duration
from controller.metrics.prometheus import MetricsError, Sample
from controller.plan import (
    Criterion,
    LatencyToBaseline,
    Plan,
    RatioThreshold,
    RatioToBaseline,
    RisingTrend,
    SoakStage,
    VerifyStage,
    ZeroTolerance,
    render_template,
)
from controller.regex_input import Pattern, PatternError, compile_pattern, matches_whole

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

SAMPLE_SERVICE = "sample"
SAMPLE_CANARY_VERSION = "1.1.0"
SAMPLE_STABLE_VERSION = "1.0.0"
SAMPLE_ENVIRONMENT = "production"
_SAMPLE_UNKNOWN = "sample"
_MAX_SHOWN_QUERY = 200


def format_path(loc: Sequence[str | int]) -> str:
    """A field's path as people read it: ``stop_criteria[0].canary_errors``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- PromQL -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlanQuery:
    """One PromQL expression of a plan: where it is, what was written, what would run."""

    loc: Loc
    template: str
    text: str
    owner: str = ""  # the criterion or gate it belongs to, for messages

    @property
    def path(self) -> str:
        return format_path(self.loc)


class _Samples(dict[str, str]):
    """Template values that never fail: a name the plan got wrong is reported by the
    template check, so here it only needs to render to something harmless."""

    def __missing__(self, key: str) -> str:
        return _SAMPLE_UNKNOWN


def sample_values(
    plan: Plan,
    *,
    service: str = SAMPLE_SERVICE,
    canary_version: str = SAMPLE_CANARY_VERSION,
    stable_version: str = SAMPLE_STABLE_VERSION,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Template values for checking a plan without a rollout: sample builtins, the
    plan's first-rollout slots, its variable defaults (or ``overrides``), and its
    window, rendered the way a rollout renders them (``Plan.template_values``)."""
    builtins = _Samples(
        service=service,
        canary_version=canary_version,
        stable_version=stable_version,
        environment=SAMPLE_ENVIRONMENT,
        window=format_duration(plan.analysis.window),
        stable_slot=plan.traffic.stable_server,
        canary_slot=plan.traffic.canary_server,
    )
    try:
        values = plan.template_values(builtins, dict(overrides or {}))
    except KeyError:  # a slot URL naming a slot URL: sample values still check the queries
        chosen = {**plan.variables, **(overrides or {})}
        values = {**builtins, **{n: render_template(v, builtins) for n, v in chosen.items()}}
    return _Samples(values)


def plan_queries(plan: Plan, values: Mapping[str, str] | None = None) -> list[PlanQuery]:
    """Every PromQL expression of the plan, rendered with ``values`` (default: the
    sample values). Stop criteria get their own window, a soak's checks its
    environment, as during a rollout."""
    base = _Samples(values if values is not None else sample_values(plan))
    found: list[PlanQuery] = []

    def add(loc: Loc, template: str | None, owner: str, **extra: str) -> None:
        if template is not None:
            text = render_template(template, _Samples({**base, **extra}))
            found.append(PlanQuery(loc, template, text, owner))

    for i, criterion in enumerate(plan.stop_criteria):
        window = format_duration(criterion.window or plan.analysis.window)
        for role, template in criterion.queries().items():
            add(("stop_criteria", i, role), template, criterion.name, window=window)
    for i, gate in enumerate(plan.gates.targets_up):
        add(("gates", "targets_up", i, "query"), gate.query, gate.name)
    add(("gates", "no_firing_alerts"), plan.gates.no_firing_alerts, "gates")
    for i, stage in enumerate(plan.stages):
        if isinstance(stage, SoakStage):
            add(
                ("stages", i, "alerts_quiet"),
                stage.alerts_quiet,
                stage.name,
                environment=stage.environment,
            )
        elif isinstance(stage, VerifyStage):
            add(("stages", i, "alerts_quiet"), stage.alerts_quiet, stage.name)
            if stage.backlog is not None:
                add(("stages", i, "backlog", "query"), stage.backlog.query, stage.name)
    return found


MAX_PROMQL_NESTING = promql_shape.MAX_NESTING
MAX_PROMQL_CHARS = promql_shape.MAX_CHARS


def promql_error(text: str) -> str | None:
    """The Prometheus parser's complaint about ``text``, or None when it parses."""
    # Measured first: the parser's time, memory and stack grow with the shape of the
    # query, and a stack overflow ends the process (controller.promql_shape).
    refused = promql_shape.shape_problem(text)
    if refused is not None:
        return refused
    try:
        promql_parser.parse(text)
    except Exception as exc:  # ValueError from the parser; any other is its bug, not a crash
        return " ".join(str(exc).split()) or type(exc).__name__
    except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException
        if type(exc).__name__ != "PanicException":
            raise
        return f"the PromQL parser failed on it: {' '.join(str(exc).split())}"
    return None


def promql_problems(queries: Iterable[PlanQuery]) -> list[Problem]:
    """Each query that is not valid PromQL once rendered, with the parser's message."""
    problems: list[Problem] = []
    for query in queries:
        error = promql_error(query.text)
        if error is not None:
            problems.append((query.loc, f"not valid PromQL: {error} (rendered: {_shown(query)})"))
    return problems


def _shown(query: PlanQuery) -> str:
    text = " ".join(query.text.split())
    return text if len(text) <= _MAX_SHOWN_QUERY else text[: _MAX_SHOWN_QUERY - 1] + "…"


# --- Alertmanager matchers --------------------------------------------------------

MatchOp = Literal["=", "!=", "=~", "!~"]
_OPERATORS: tuple[MatchOp, ...] = ("=~", "!~", "!=", "=")  # longest first
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_END = re.compile(r"[\s=!~\"']")
_UNQUOTED_FORBIDDEN = re.compile(r"[\s\"',{}]")
_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}


class MatcherError(ValueError):
    """A matcher Alertmanager would not parse; the message says what is wrong."""


@dataclass(frozen=True)
class Matcher:
    """One Alertmanager matcher, ``name op value``, as Alertmanager evaluates it: a
    missing label is the empty string, and a regex must match the whole value."""

    text: str
    name: str
    op: MatchOp
    value: str
    regex: Pattern | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        found = matches_whole(self.regex, actual)
        return found if self.op == "=~" else not found


def parse_matcher(text: str, stored: bool = False) -> Matcher:
    """Parse ``severity="critical"``, ``team=~"pay.*"``, ``env!=staging``.

    Alertmanager's grammar: a label name, an operator (``=``, ``!=``, ``=~``, ``!~``),
    and a value, double-quoted (escapes ``\\"``, ``\\\\``, ``\\n``; another backslash
    stays as written, so ``"pay\\.eu"`` is the regex ``pay\\.eu``) or unquoted
    (no whitespace, quotes, commas or braces). A regex is anchored as Alertmanager
    does, ``^(?:value)$``, and is RE2 but, with ``stored`` (a running rollout's plan),
    where only Python's ``re`` takes it (``controller.regex_input``).

    Raises:
        MatcherError: what is wrong, for a person to fix.
    """
    source = text.strip()
    if not source:
        raise MatcherError('empty matcher; write one like severity="critical"')
    name = _NAME_END.split(source, maxsplit=1)[0]
    rest = source[len(name) :].lstrip()
    if not name and rest[:1] in ("=", "!", "~"):
        op_found = next((o for o in _OPERATORS if rest.startswith(o)), rest[:1])
        raise MatcherError(f'no label name before {op_found!r}; write name="value"')
    if not name:
        raise MatcherError(f"{rest[:10]!r} does not start with a label name (it is not quoted)")
    if not _LABEL_NAME.fullmatch(name):
        raise MatcherError(
            f"{name!r} is not a label name (letters, digits and _, not starting with a digit)"
        )
    for wrong, right in (("==", "="), ("~=", "=~"), ("=!", "!="), ("~!", "!~")):
        if rest.startswith(wrong):
            raise MatcherError(f"{wrong!r} is not an operator: did you mean {right!r}?")
    op = next((o for o in _OPERATORS if rest.startswith(o)), None)
    if op is None:
        found = f"found {rest[:10]!r}" if rest else "found nothing"
        raise MatcherError(f"expected an operator =, !=, =~ or !~ after {name!r}, {found}")
    raw = rest[len(op) :].lstrip()
    if raw[:1] in ("=", "~", "!"):
        raise MatcherError(f"{op + raw[0]!r} is not an operator: use =, !=, =~ or !~")
    value = _quoted(raw) if raw.startswith('"') else _unquoted(raw)
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = compile_pattern(value, wrap=True, stored=stored)
        except PatternError as exc:
            raise MatcherError(f"{value!r} is not a valid regular expression: {exc}") from None
    return Matcher(source, name, op, value, regex)


def _quoted(raw: str) -> str:
    """The value inside double quotes, with Alertmanager's escapes applied."""
    out: list[str] = []
    i = 1
    while i < len(raw):
        char = raw[i]
        if char == "\\" and i + 1 < len(raw):
            following = raw[i + 1]
            out.append(_ESCAPES.get(following, "\\" + following))
            i += 2
            continue
        if char == '"':
            trailing = raw[i + 1 :].strip()
            if trailing:
                raise MatcherError(
                    f"unexpected {trailing!r} after the quoted value (one matcher per entry)"
                )
            return "".join(out)
        out.append(char)
        i += 1
    raise MatcherError(f"unterminated quoted value {raw!r}: add the closing '\"'")


def _unquoted(raw: str) -> str:
    bad = _UNQUOTED_FORBIDDEN.search(raw)
    if bad is None:
        return raw
    if raw.endswith('"'):
        raise MatcherError(
            f"value {raw!r} ends with '\"' but does not start with one: quote both ends"
        )
    if bad.group(0) in "\"'":
        raise MatcherError(f"quote the whole value with double quotes, not {raw!r}")
    what = "whitespace" if bad.group(0).isspace() else repr(bad.group(0))
    raise MatcherError(f"an unquoted value cannot contain {what}: quote it, not {raw!r}")


def matcher_problems(plan: Plan) -> list[Problem]:
    """Each ``alerts.matchers`` entry that Alertmanager's grammar refuses."""
    problems: list[Problem] = []
    for i, text in enumerate(plan.alerts.matchers):
        try:
            parse_matcher(text)
        except MatcherError as exc:
            problems.append((("alerts", "matchers", i), f"{text!r}: {exc}"))
    return problems


def plan_problems(plan: Plan) -> list[Problem]:
    """Every PromQL and matcher problem of a plan that passed its field validation."""
    return promql_problems(plan_queries(plan)) + matcher_problems(plan)


# --- What a query without a series will mean ---------------------------------------


@dataclass(frozen=True)
class AbsentMeaning:
    """What a stop criterion decides when one of its queries returns no series.

    ``warning``: a healthy service may never pass it (a failure series that exists
    only after the first failure, with nothing in the check counting the canary's
    requests): the rollout would pause on "inconclusive" at every check."""

    criterion: str
    meaning: str
    warning: bool = False


def absent_series_meanings(plan: Plan) -> list[AbsentMeaning]:
    """For each stop criterion, in words, what an absent series will mean: services
    create labelled error series with their first error, and a plan's author must
    know, before a rollout pauses, whether that reads as 0 or as no data."""
    return [_absent_meaning(plan, criterion) for criterion in plan.stop_criteria]


_NO_DATA = "inconclusive (no data)"


def _absent_meaning(plan: Plan, criterion: Criterion) -> AbsentMeaning:
    name = criterion.name
    if isinstance(criterion, RisingTrend | LatencyToBaseline):
        return AbsentMeaning(name, f"no series: {_NO_DATA}")
    if not criterion.absent_errors_are_zero:
        never = isinstance(criterion, ZeroTolerance) and criterion.total is None
        return AbsentMeaning(
            name,
            f"any query without a series: {_NO_DATA} (absent_errors_are_zero: false)"
            + (
                "; a service that creates its failure series with the first failure never passes it"
                if never
                else ""
            ),
            warning=never,
        )
    if isinstance(criterion, RatioToBaseline):
        return AbsentMeaning(
            name,
            "no canary_errors (baseline_errors) series while canary_total (baseline_total) "
            f"counts requests: 0 errors; no canary_total or baseline_total series: {_NO_DATA}",
        )
    if isinstance(criterion, RatioThreshold):
        return AbsentMeaning(
            name,
            f"no errors series while total counts requests: 0 errors; no total series: {_NO_DATA}",
        )
    if criterion.total is not None:
        return AbsentMeaning(
            name,
            f"no failures series while total counts requests: 0 failures; no total "
            f"series: {_NO_DATA}",
        )
    return _failures_without_total(plan, criterion)


def _counts_canary_requests(criterion: Criterion) -> bool:
    """What ``controller.analysis.runner.canary_traffic`` reads a check's traffic from."""
    if isinstance(criterion, ZeroTolerance):
        return criterion.total is not None
    return isinstance(criterion, RatioToBaseline | RatioThreshold)


def _failures_without_total(plan: Plan, criterion: ZeroTolerance) -> AbsentMeaning:
    """A failure count with no total borrows the check's evidence of canary traffic
    from the other criteria measured with it, stage by stage."""
    sources: list[str] = []
    uncovered: list[str] = []
    for stage in plan.stages:
        if criterion.stages is not None and stage.name not in criterion.stages:
            continue
        counting = [
            c.name
            for c in plan.criteria_for(stage.name)
            if c is not criterion and _counts_canary_requests(c)
        ]
        sources += [c for c in counting if c not in sources]
        if not counting:
            uncovered.append(stage.name)
    counted = (
        f"no failures series: 0 failures when {' or '.join(sources)} counts at least "
        f"{criterion.min_requests} canary request{'s' if criterion.min_requests != 1 else ''} "
        f"in the same check; otherwise {_NO_DATA}"
    )
    if not sources:
        return AbsentMeaning(
            criterion.name,
            f"no failures series: {_NO_DATA} at every check until the first failure: no "
            "other criterion counts the canary's requests (give it a total)",
            warning=True,
        )
    if uncovered:
        return AbsentMeaning(
            criterion.name,
            f"{counted}; in {', '.join(uncovered)} no other criterion counts them, so "
            f"there it is {_NO_DATA} until the first failure (give it a total)",
            warning=True,
        )
    return AbsentMeaning(criterion.name, counted)


# --- Against a live Prometheus ------------------------------------------------------


class InstantQueries(Protocol):
    """What ``check_queries`` needs of a Prometheus (``PrometheusProvider``)."""

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]: ...


QueryStatus = Literal["ok", "empty", "failing"]


@dataclass(frozen=True)
class QueryCheck:
    """What one query returned from a real Prometheus."""

    query: PlanQuery
    status: QueryStatus
    detail: str


def check_queries(queries: Iterable[PlanQuery], prometheus: InstantQueries) -> list[QueryCheck]:
    """Run each query once as an instant query. No series is a warning (the metric
    may only appear with traffic, or the sample labels match nothing), not a failure;
    only Prometheus refusing the query, or not answering, is."""
    results: list[QueryCheck] = []
    for query in queries:
        try:
            samples = prometheus.instant(query.text)
        except MetricsError as exc:
            results.append(QueryCheck(query, "failing", exc.reason))
            continue
        if samples:
            count = f"{len(samples)} series" if len(samples) != 1 else "1 series"
            results.append(QueryCheck(query, "ok", count))
        else:
            results.append(QueryCheck(query, "empty", "no series"))
    return results
