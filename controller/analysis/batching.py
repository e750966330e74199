"""Batched queries: one Prometheus query answers a criterion for every rollout at once.

A plan's query template names its rollout through label matchers
(``service="{{ service }}"``). Rendered per rollout, N rollouts ask N queries that
differ only in those values: N × queries per check, every round. Rendered with those
matchers lifted (``service!=""``) and every aggregation grouped ``by`` the lifted
labels, one query answers all of them, and each rollout picks its own series by its
label values. Judges stay per rollout; only the asking is shared.

Not every query keeps its meaning when lifted: ``absent()`` answers for the rollout
only when it names it, ``label_replace`` and ``on()``/``ignoring()`` matching move
labels, an aggregation ``without`` labels or a selector that does not name the
rollout mixes rollouts together. The rewrite is kept only when the rewritten query
parses into the same tree as the rollout's own query, except for the lifted matchers
and the added grouping labels, and uses only label-preserving functions; any other
query is asked per rollout, as before. Correctness over savings.

Answers are shared on a clock grid (``SharedAnswers``): a batched query is evaluated
at the start of the current slot, and every check in that slot reads that answer.
The slot is at most half the plan's interval, so a rollout never judges the same
answer twice; the data a check judges is at most one slot old, and the measurement
records when it was evaluated.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import promql_parser
import structlog

from controller.analysis.answer_cache import (
    AnswerCacheError,
    CachedAnswer,
    RedisAnswerCache,
    SharedFailure,
    as_series,
)
from controller.background import fetch_ahead
from controller.metrics.prometheus import MetricsError, Sample, Series
from controller.metrics.provider import MetricsProvider
from controller.plan import render_template, template_variables

__all__ = ["BatchedQuery", "SharedAnswers", "batch_form"]

log = structlog.get_logger(__name__)

_SENTINEL = "__canary_batch_{}__"
# What a liftable value is replaced by while a template's form is worked out once
# for every rollout (``batch_form``).
_STAND_IN = "canary-stand-in-{}-7e3b"
_SENTINEL_ANYWHERE = re.compile(r"__canary_batch_([0-9]+)__")
_SENTINEL_MATCHER = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!=|!~|=)\s*([\"'`])__canary_batch_([0-9]+)__\3"
)
# The metric name selects what is measured, and histogram_quantile consumes ``le``:
# neither names a rollout.
_NEVER_LIFTED = frozenset({"__name__", "le"})
# An aggregation in prefix form, with or without a ``by`` clause; the suffix form
# (``sum(x) by (le)``) is not rewritten, and the tree comparison then refuses it.
_AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|quantile|topk|bottomk)\s*"
    r"(?:by\s*\(([^()]*)\)\s*)?\("
)
_GROUPING_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "quantile", "topk",
     "bottomk"}
)  # fmt: skip
# Functions whose answer for a series depends on that series alone (labels kept or,
# for histogram_quantile, only ``le`` dropped): lifting the rollout's matchers and
# picking its series afterwards gives what its own query gives.
_SERIES_WISE_FUNCTIONS = frozenset(
    {
        "abs", "ceil", "floor", "round", "exp", "ln", "log2", "log10", "sqrt", "sgn",
        "clamp", "clamp_min", "clamp_max", "rate", "irate", "increase", "delta", "idelta",
        "deriv", "predict_linear", "resets", "changes", "histogram_quantile",
        "histogram_count", "histogram_sum", "histogram_fraction", "avg_over_time",
        "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
        "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
        "present_over_time",
    }
)  # fmt: skip
# Characters that PromQL string escaping would read differently from the label value.
_UNSAFE_VALUE = re.compile(r"[\\\"'`\n\r]")


@dataclass(frozen=True)
class BatchedQuery:
    """The query for every rollout, and which of its series are this rollout's."""

    query: str
    labels: tuple[tuple[str, str], ...]

    def picks(self, series_labels: dict[str, str]) -> bool:
        return all(series_labels.get(label) == value for label, value in self.labels)


def batch_form(template: str, values: dict[str, str]) -> BatchedQuery | None:
    """The batched form of ``template`` for a rollout with ``values``, or None when the
    query cannot be shared without changing what it means.

    The form is worked out once per template (parsing and comparing both queries is
    the costly part), not once per rollout: the values a form could lift are replaced
    by stand-ins, and each rollout's own values are put back into the labels it
    picks. A form that kept a stand-in in its query (the value was used another way)
    is worked out again with the rollout's real values.
    """
    used = set(template_variables(template))
    items = tuple(sorted((k, v) for k, v in values.items() if k in used))
    real: dict[str, str] = {}
    general_items = []
    for name, value in items:
        if name != "window" and _liftable(value):
            stand_in = _STAND_IN.format(len(real))
            real[stand_in] = value
            value = stand_in
        general_items.append((name, value))
    general = _batch_form(template, tuple(general_items))
    if general is None:
        return None
    if any(stand_in in general.query for stand_in in real):
        return _batch_form(template, items)
    return BatchedQuery(
        general.query,
        tuple(sorted((label, real.get(value, value)) for label, value in general.labels)),
    )


@lru_cache(maxsize=65536)
def _batch_form(template: str, items: tuple[tuple[str, str], ...]) -> BatchedQuery | None:
    values = dict(items)
    candidates = sorted(
        name
        for name in template_variables(template)
        if name != "window" and _liftable(values.get(name))
    )
    while candidates:
        # Sentinels by index: a variable's name may itself contain "__".
        sentinels = {name: _SENTINEL.format(index) for index, name in enumerate(candidates)}
        rendered = render_template(template, {**values, **sentinels})
        by_index = dict(enumerate(candidates))
        lifted, refused = _lifted_matchers(rendered, by_index)
        if not refused:
            break
        remaining = [name for name in candidates if name not in refused]
        if len(remaining) == len(candidates):
            return None  # a sentinel we cannot account for: never guess
        candidates = remaining
    else:
        return None
    if not lifted:
        return None
    query = _lift(rendered, lifted)
    original = render_template(template, values)
    labels = {label: values[name] for label, name in lifted.items()}
    if not _same_but_lifted(original, query, labels):
        return None
    return BatchedQuery(query, tuple(sorted(labels.items())))


def _liftable(value: str | None) -> bool:
    return (
        bool(value)
        and not _UNSAFE_VALUE.search(value or "")
        and not _SENTINEL_ANYWHERE.search(value or "")
    )


def _lifted_matchers(rendered: str, by_index: dict[int, str]) -> tuple[dict[str, str], set[str]]:
    """Label → variable of each ``label="<variable>"`` matcher, and the variables that
    cannot be lifted (used another way, matched by a label that is not an ordinary
    one, or a label matched against two of them)."""
    lifted: dict[str, str] = {}
    refused: set[str] = set()
    for match in _SENTINEL_MATCHER.finditer(rendered):
        label, op, _, index = match.groups()
        name = by_index.get(int(index), "")
        if op != "=" or label in _NEVER_LIFTED:
            refused.add(name)
        elif lifted.setdefault(label, name) != name:
            refused.update({name, lifted[label]})
    for index in _SENTINEL_ANYWHERE.findall(_SENTINEL_MATCHER.sub("", rendered)):
        refused.add(by_index.get(int(index), ""))
    return {label: name for label, name in lifted.items() if name not in refused}, refused


def _lift(rendered: str, lifted: dict[str, str]) -> str:
    """Each lifted matcher becomes ``label!=""``; each aggregation groups by them."""
    lifted_labels = list(lifted)

    def matcher(match: re.Match[str]) -> str:
        return f'{match.group(1)}!=""'

    def aggregation(match: re.Match[str]) -> str:
        existing = [label.strip() for label in (match.group(2) or "").split(",") if label.strip()]
        grouping = existing + [label for label in lifted_labels if label not in existing]
        return f"{match.group(1)} by ({', '.join(grouping)}) ("

    return _AGGREGATION.sub(aggregation, _SENTINEL_MATCHER.sub(matcher, rendered))


def _same_but_lifted(original: str, rewritten: str, labels: dict[str, str]) -> bool:
    try:
        before, after = promql_parser.parse(original), promql_parser.parse(rewritten)
    except Exception:  # the native parser raises its own error types
        return False
    return _Comparison(labels).same(before, after)


class _Comparison:
    """Walks the rollout's query and the batched one side by side."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def same(self, a: object, b: object) -> bool:
        kind = type(a).__name__
        if kind != type(b).__name__:
            return False
        check: Callable[[object, object], bool] | None = getattr(self, f"_{kind}", None)
        return check is not None and check(a, b)

    def _NumberLiteral(self, a, b) -> bool:  # noqa: N802 (named after the node type)
        return a.val == b.val or (math.isnan(a.val) and math.isnan(b.val))

    def _ParenExpr(self, a, b) -> bool:  # noqa: N802
        return self.same(a.expr, b.expr)

    def _UnaryExpr(self, a, b) -> bool:  # noqa: N802
        return self.same(a.expr, b.expr)

    def _Call(self, a, b) -> bool:  # noqa: N802
        return (
            a.func.name == b.func.name
            and a.func.name in _SERIES_WISE_FUNCTIONS
            and len(a.args) == len(b.args)
            and all(self.same(x, y) for x, y in zip(a.args, b.args, strict=True))
        )

    def _AggregateExpr(self, a, b) -> bool:  # noqa: N802
        if str(a.op) != str(b.op) or str(a.op) not in _GROUPING_AGGREGATIONS:
            return False
        grouped_by = set(a.modifier.labels) if a.modifier is not None else set()
        if a.modifier is not None and "By" not in str(a.modifier.type):
            return False  # ``without``: the rollout's labels would be grouped away
        if b.modifier is None or "By" not in str(b.modifier.type):
            return False
        if set(b.modifier.labels) != grouped_by | set(self.labels):
            return False
        if (a.param is None) != (b.param is None):
            return False
        return (a.param is None or self.same(a.param, b.param)) and self.same(a.expr, b.expr)

    def _BinaryExpr(self, a, b) -> bool:  # noqa: N802
        if str(a.op) != str(b.op):
            return False
        for modifier in (a.modifier, b.modifier):
            if modifier is not None and (modifier.matching is not None or modifier.card is None):
                return False  # on()/ignoring() or group_left/right move labels
        if (a.modifier is None) != (b.modifier is None):
            return False
        if a.modifier is not None and (
            a.modifier.return_bool != b.modifier.return_bool
            or str(a.modifier.card) != str(b.modifier.card)
        ):
            return False
        # Matching a side that names the rollout with one aggregated away from it
        # answers nothing on its own; batched, both would carry the lifted labels and
        # match. Between two vectors, both sides keep the labels or both lose them.
        vectors = not (_is_scalar(a.lhs) or _is_scalar(a.rhs))
        if vectors and self._keeps(a.lhs) != self._keeps(a.rhs):
            return False
        return self.same(a.lhs, b.lhs) and self.same(a.rhs, b.rhs)

    def _keeps(self, node: object) -> bool:
        """Whether the rollout's own query keeps the lifted labels on ``node``'s series."""
        kind = type(node).__name__
        if kind in ("VectorSelector", "MatrixSelector"):
            return True
        if kind in ("ParenExpr", "UnaryExpr"):
            return self._keeps(node.expr)
        if kind == "Call":
            vectors = [arg for arg in node.args if not _is_scalar(arg)]
            return bool(vectors) and all(self._keeps(arg) for arg in vectors)
        if kind == "AggregateExpr":
            grouped = set(node.modifier.labels) if node.modifier is not None else set()
            return set(self.labels) <= grouped
        if kind == "BinaryExpr":
            sides = [side for side in (node.lhs, node.rhs) if not _is_scalar(side)]
            return bool(sides) and all(self._keeps(side) for side in sides)
        return False

    def _MatrixSelector(self, a, b) -> bool:  # noqa: N802
        return a.range == b.range and self.same(a.vector_selector, b.vector_selector)

    def _VectorSelector(self, a, b) -> bool:  # noqa: N802
        if a.name != b.name or a.offset != b.offset or a.at is not None or b.at is not None:
            return False
        if a.matchers.or_matchers or b.matchers.or_matchers:
            return False
        mine = [(m.name, str(m.op), m.value) for m in a.matchers.matchers]
        shared = [(m.name, str(m.op), m.value) for m in b.matchers.matchers]
        equal, not_equal = str(promql_parser.MatchOp.Equal), str(promql_parser.MatchOp.NotEqual)
        expected = [
            (name, not_equal, "") if name in self.labels and op == equal else (name, op, value)
            for name, op, value in mine
        ]
        # Every selector must name the rollout by every lifted label, or the batched
        # query would read other rollouts' series into this one's numbers.
        named = {name for name, op, _ in mine if op == equal and name in self.labels}
        return shared == expected and named == set(self.labels)


def _is_scalar(node: object) -> bool:
    """A number, or arithmetic of numbers: matched against every series alike."""
    kind = type(node).__name__
    if kind == "NumberLiteral":
        return True
    if kind in ("ParenExpr", "UnaryExpr"):
        return _is_scalar(node.expr)
    if kind == "BinaryExpr":
        return _is_scalar(node.lhs) and _is_scalar(node.rhs)
    return False


@dataclass(frozen=True)
class SharedAnswer(CachedAnswer):
    """What a batched query answered, and when it was evaluated (as another worker
    process reads it: ``CachedAnswer``), with the index this process picks from.

    Every rollout of the slot picks its own series from the same answer: scanning
    the whole answer for each would make a round cost N² label comparisons, so the
    series are indexed once per set of picked labels and each pick is a lookup.
    """

    _indexes: dict[tuple[str, ...], dict[tuple[str | None, ...], list]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def picked_samples(self, batched: BatchedQuery) -> list[Sample]:
        return self._picked(batched, self.samples)

    def picked_series(self, batched: BatchedQuery) -> list[Series]:
        return [as_series(item) for item in self._picked(batched, self.series)]

    def _picked(self, batched: BatchedQuery, items: Sequence) -> list:
        names = tuple(label for label, _ in batched.labels)
        with self._guard:
            index = self._indexes.get(names)
            if index is None:
                index = {}
                for item in items:
                    key = tuple(item.labels.get(name) for name in names)
                    index.setdefault(key, []).append(item)
                self._indexes[names] = index
        return list(index.get(tuple(value for _, value in batched.labels), ()))


class SharedAnswers:
    """Answers of batched queries in this process, one per query per slot of the clock.

    Threads of one check (and checks of one process) asking the same query in the
    same slot wait for one request instead of sending their own; a failure reaches
    the askers already waiting and is not kept, so the next asker tries again (and
    the caller asks per rollout meanwhile). ``max_slot`` caps the slot (default
    5 s); a plan's slot is at most half its interval. With a ``fleet`` cache
    (``controller.analysis.answer_cache``) one process of all workers asks each
    query per slot and the others read its answer; without one, or while it fails,
    each process asks its own.

    With ``serve_previous``, a check that finds the slot's answer not here yet gets
    the previous slot's, and the slot's is fetched on a thread meanwhile: without
    it every check at a slot's start waited for the slot's query (at a thousand
    rollouts, a second or more), every thread of every worker waiting at the same
    moment. The previous answer is served only when it is newer than the caller's
    ``not_before`` (what the rollout judged last, the start of its step), so a
    rollout never judges the same answer twice nor data from before a weight change;
    the data a check judges is then at most two slots old, and its measurement says
    when it was evaluated.
    """

    def __init__(
        self,
        provider: MetricsProvider,
        max_slot: timedelta = timedelta(seconds=5),
        fleet: RedisAnswerCache | None = None,
        serve_previous: bool = False,
    ):
        self.provider = provider
        self.max_slot = max_slot
        self.fleet = fleet
        self.serve_previous = serve_previous
        self.asked = 0  # requests sent to Prometheus (for tests and benchmarks)
        self._fleet_failed_at: float | None = None  # when the last failure was logged
        self._answers: dict[tuple, SharedAnswer] = {}
        self._in_flight: dict[tuple, Future[SharedAnswer]] = {}
        self._guard = threading.Lock()

    def slot_for(self, interval: timedelta) -> timedelta:
        return min(self.max_slot, interval / 2)

    def instant(
        self,
        batched: BatchedQuery,
        now: datetime,
        interval: timedelta,
        not_before: datetime | None = None,
        at: datetime | None = None,
        wait: bool = True,
    ) -> tuple[list[Sample], datetime] | None:
        """The rollout's samples of ``batched`` and when they were evaluated: the
        slot's answer (see ``_answer_for`` for ``not_before``, ``at`` and
        ``wait``), None only when told not to wait for one."""

        def ask(moment: datetime) -> SharedAnswer:
            return SharedAnswer(moment, self.provider.instant(batched.query, at=moment), [])

        answer = self._answer_for(
            ("instant", batched.query), (), now, interval, ask, not_before, at, wait
        )
        return None if answer is None else (answer.picked_samples(batched), answer.evaluated_at)

    def range(
        self,
        batched: BatchedQuery,
        now: datetime,
        window: timedelta,
        step_seconds: float,
        interval: timedelta,
        not_before: datetime | None = None,
        at: datetime | None = None,
        wait: bool = True,
    ) -> tuple[list[Series], datetime] | None:
        """``instant`` for a range query of ``window`` ending at the slot's start."""

        def ask(moment: datetime) -> SharedAnswer:
            series = self.provider.range(batched.query, moment - window, moment, step_seconds)
            return SharedAnswer(moment, [], series)

        what, rest = ("range", batched.query), (window, step_seconds)
        answer = self._answer_for(what, rest, now, interval, ask, not_before, at, wait)
        return None if answer is None else (answer.picked_series(batched), answer.evaluated_at)

    def evaluated_at(self, now: datetime, interval: timedelta) -> datetime:
        """When an answer shared at ``now`` would have been evaluated."""
        return _slot_start(now, self.slot_for(interval))

    def _answer_for(
        self,
        what: tuple,
        rest: tuple,
        now: datetime,
        interval: timedelta,
        ask: Callable[[datetime], SharedAnswer],
        not_before: datetime | None,
        at: datetime | None,
        wait: bool,
    ) -> SharedAnswer | None:
        """The answer to give at ``now``: the slot's if held here; else (with
        ``serve_previous`` and the previous one newer than ``not_before``) the
        previous slot's, the slot's fetched meanwhile; else the slot's, waited for.
        ``at``: the answer evaluated then (a criterion's other queries, judged from
        the first one's evaluation time), fetched if not held. ``wait=False``: None
        rather than wait for Redis or Prometheus."""
        slot = self.slot_for(interval)
        current = _slot_start(now, slot)

        def key(moment: datetime) -> tuple:
            return (*what, moment, *rest)

        if at is not None:
            held = self._held(key(at))
            if held is not None or not wait:
                return held
            return self._answer(key(at), lambda: ask(at))
        held = self._held(key(current))
        if held is not None:
            return held
        if self.serve_previous:
            previous = self._held(key(current - slot))
            if previous is not None and (not_before is None or previous.evaluated_at > not_before):
                self._fetch_in_background(key(current), lambda: ask(current))
                return previous
        if not wait:
            return None
        return self._answer(key(current), lambda: ask(current))

    def _held(self, key: tuple) -> SharedAnswer | None:
        with self._guard:
            return self._answers.get(key)

    def _answer(self, key: tuple, ask: Callable[[], SharedAnswer]) -> SharedAnswer:
        with self._guard:
            known = self._answers.get(key)
            if known is not None:
                return known
            waiting = self._in_flight.get(key)
            if waiting is None:
                mine: Future[SharedAnswer] = Future()
                self._in_flight[key] = mine
        if waiting is not None:
            return waiting.result()  # the asker's answer, or its failure
        return self._fetch(key, ask, mine)

    def _fetch_in_background(self, key: tuple, ask: Callable[[], SharedAnswer]) -> None:
        """Start fetching ``key`` on a thread unless it is held or on its way."""
        with self._guard:
            if key in self._answers or key in self._in_flight:
                return
            mine: Future[SharedAnswer] = Future()
            self._in_flight[key] = mine

        def fetch() -> None:
            try:
                self._fetch(key, ask, mine)
            except Exception as exc:  # not kept: the next check asks again
                log.warning("batched query failed", query=key[1], error=str(exc))

        try:
            fetch_ahead(fetch)
        except RuntimeError as exc:  # no thread to run it (the process is exiting)
            with self._guard:
                del self._in_flight[key]
            mine.set_exception(MetricsError(key[1], f"not fetched: {exc}"))

    def _fetch(
        self, key: tuple, ask: Callable[[], SharedAnswer], mine: Future[SharedAnswer]
    ) -> SharedAnswer:
        """Ask for ``key`` (in the fleet or here); the askers waiting on ``mine`` get
        the answer or the failure, and only an answer is kept."""
        try:
            answer = self._ask_fleet_or_here(key, ask)
        except BaseException as exc:
            with self._guard:
                del self._in_flight[key]
            mine.set_exception(exc)
            raise
        with self._guard:
            del self._in_flight[key]
            self._answers[key] = answer
            self._forget_before(answer.evaluated_at - 4 * self.max_slot)
        mine.set_result(answer)
        return answer

    def _ask_fleet_or_here(self, key: tuple, ask: Callable[[], SharedAnswer]) -> SharedAnswer:
        """Another worker process's answer for this slot, or this one's (shared)."""

        def ask_and_count() -> SharedAnswer:
            with self._guard:
                self.asked += 1
            return ask()

        if self.fleet is None:
            return ask_and_count()
        try:
            cached = self.fleet.get_or_ask(
                key, ask_and_count, keep=4 * self.max_slot, evaluated_at=key[2]
            )
        except AnswerCacheError as exc:
            self._fleet_failed(exc)
            return ask_and_count()
        except SharedFailure as failure:
            reason = f"batched query failed in another worker: {failure}"
            raise MetricsError(key[1], reason, status=failure.status) from None
        if isinstance(cached, SharedAnswer):
            return cached  # this process asked
        return SharedAnswer(cached.evaluated_at, cached.samples, cached.series)

    def _fleet_failed(self, exc: AnswerCacheError) -> None:
        """Say once a minute, not once a query, that answers are not shared."""
        now = time.monotonic()
        with self._guard:
            if self._fleet_failed_at is not None and now - self._fleet_failed_at < 60:
                return
            self._fleet_failed_at = now
        log.warning("answers not shared between workers for now; asking Prometheus", error=str(exc))

    def _forget_before(self, moment: datetime) -> None:
        for key in [k for k, a in self._answers.items() if a.evaluated_at < moment]:
            del self._answers[key]


def _slot_start(now: datetime, slot: timedelta) -> datetime:
    """The start of the slot of the clock grid ``now`` falls in (UTC, from the epoch).
    A naive ``now`` is refused: Python would read it as the host's local time."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive datetime {now.isoformat()}: pass a timezone-aware one")
    seconds = slot.total_seconds()
    if seconds <= 0:
        return now
    epoch = now.timestamp()
    return datetime.fromtimestamp(epoch - math.fmod(epoch, seconds), tz=UTC)
