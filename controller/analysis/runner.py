"""Run one stop criterion: resolve its queries, ask Prometheus, hand numbers to its judge.

This is the only place analysis touches the metrics provider, and the only place
a provider failure becomes a verdict: *error*, which holds the rollout and never
passes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from controller import timeouts
from controller.analysis import judges
from controller.analysis.batching import BatchedQuery, SharedAnswers, batch_form
from controller.analysis.verdict import Judgement, Verdict
from controller.background import in_background
from controller.durations import format_duration
from controller.metrics.prometheus import MetricsError, Sample, Series
from controller.metrics.provider import MetricsProvider
from controller.plan import (
    Criterion,
    LatencyToBaseline,
    RatioThreshold,
    RatioToBaseline,
    RisingTrend,
    ZeroTolerance,
    render_template,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Measurement:
    """One criterion measured once: the resolved queries, their values, and the verdict."""

    criterion: str
    judge: str
    queries: dict[str, str]
    inputs: dict[str, float | None]
    judgement: Judgement
    # When the shared answers of batched queries were evaluated (None: asked per
    # rollout, at the check's own time) and which roles were batched.
    batched_at: datetime | None = None
    batched_roles: tuple[str, ...] = ()

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict

    def as_event(self) -> dict:
        """The event-log payload: enough to re-check the decision by hand."""
        j = self.judgement
        batched = (
            {
                "batched": {
                    "evaluated_at": self.batched_at.isoformat(),
                    "roles": list(self.batched_roles),
                }
            }
            if self.batched_at is not None
            else {}
        )
        return {
            "criterion": self.criterion,
            "judge": self.judge,
            "verdict": j.verdict.value,
            "reason": j.reason,
            "value": _json_number(j.value),
            "limit": _json_number(j.limit),
            "queries": self.queries,
            "inputs": {k: _json_number(v) for k, v in self.inputs.items()},
            "details": {k: _json_number(v) for k, v in j.details.items()},
            **batched,
        }


def _json_number(value: float | None) -> float | str | None:
    """JSON has no NaN or infinity; keep them visible as text."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


class _SeriesShapeError(Exception):
    pass


def _scalar(samples: list[Sample]) -> float | None:
    if not samples:
        return None
    if len(samples) > 1:
        raise _SeriesShapeError(
            f"query returned {len(samples)} series, expected one: aggregate it (sum, max)"
        )
    return samples[0].value


def measure(
    criterion: Criterion,
    provider: MetricsProvider,
    variables: dict[str, str],
    default_window: timedelta,
    now: datetime,
    previous_baseline: float | None = None,
    shared: SharedAnswers | None = None,
    interval: timedelta | None = None,
    not_before: datetime | None = None,
    held_only: bool = False,
) -> Measurement:
    """Measure ``criterion`` at ``now``; never raises for provider or data problems
    (only when the task runs out of time, which is no verdict). ``held_only``:
    measure only from shared answers this process holds already, and raise
    ``WouldWait`` rather than wait for any query.

    With ``shared`` answers (and the plan's ``interval``), a criterion whose queries
    can all be asked once for every rollout is (``controller.analysis.batching``),
    provided the shared answer was evaluated after ``not_before`` (this rollout's
    last shared answer, or the start of its step: never the same data twice, nor
    data from before a weight change). Otherwise, and when Prometheus rejects the
    batched query, its queries are asked for this rollout alone, at ``now``."""
    window = criterion.window or default_window
    values = {**variables, "window": format_duration(window)}
    templates = criterion.queries()
    queries = {role: render_template(t, values) for role, t in templates.items()}
    forms = _shared_forms(templates, values, now, shared, interval, not_before)
    asker = _Asker(
        provider, now, shared if forms else None, interval, forms or {}, held_only, not_before
    )
    try:
        with timeouts.running(f"stop criterion {criterion.name}"):
            try:
                inputs, judgement = _measure_with(
                    asker, criterion, queries, window, previous_baseline
                )
            except _BatchFailed as failed:
                if not failed.rejected:
                    # Prometheus did not answer (down, timed out, overloaded): asking
                    # it once per rollout instead would multiply its load by the
                    # number of rollouts at the moment it is least able to bear it.
                    raise failed.error from None
                log.warning(
                    "batched query failed; asking per rollout",
                    criterion=criterion.name,
                    error=str(failed.error),
                )
                asker = _Asker(provider, now, None, interval, {})
                inputs, judgement = _measure_with(
                    asker, criterion, queries, window, previous_baseline
                )
    except timeouts.out_of_time():
        raise  # the task's time is up: not a verdict of any kind (controller.timeouts)
    except WouldWait:
        raise  # asked to measure without waiting: the caller measures it on a thread
    except MetricsError as exc:
        inputs, judgement = {}, Judgement(Verdict.ERROR, f"Prometheus: {exc}")
    except _SeriesShapeError as exc:
        inputs, judgement = {}, Judgement(Verdict.INCONCLUSIVE, str(exc))
    except Exception as exc:  # a bug here must hold the rollout, never crash or promote it
        log.exception("measurement failed", criterion=criterion.name)
        inputs = {}
        judgement = Judgement(Verdict.ERROR, f"measurement failed: {type(exc).__name__}: {exc}")
    return Measurement(
        criterion.name,
        criterion.judge,
        queries,
        inputs,
        judgement,
        batched_at=asker.batched_at,
        batched_roles=tuple(asker.batched_roles),
    )


def _measure_with(
    asker: _Asker,
    criterion: Criterion,
    queries: dict[str, str],
    window: timedelta,
    previous_baseline: float | None,
) -> tuple[dict[str, float | None], Judgement]:
    if isinstance(criterion, RisingTrend):
        series = asker.range("series", queries["series"], window, criterion.step)
        if len(series) > 1:
            raise _SeriesShapeError(
                f"query returned {len(series)} series, expected one: aggregate it (max, sum)"
            )
        points = series[0].points if series else []
        inputs: dict[str, float | None] = {"points": float(len(points))}
        return inputs, judges.rising_trend(criterion, points, criterion.step.total_seconds())
    inputs = {role: _scalar(asker.instant(role, query)) for role, query in queries.items()}
    counted = _absent_errors_as_zero(criterion, inputs)
    return inputs, _with_notes(_judge_scalars(criterion, inputs, previous_baseline), counted)


def _shared_forms(
    templates: dict[str, str],
    values: dict[str, str],
    now: datetime,
    shared: SharedAnswers | None,
    interval: timedelta | None,
    not_before: datetime | None,
) -> dict[str, BatchedQuery] | None:
    """The batched form of every query of a criterion, or None: all of its queries
    are shared, or none (its numbers are then judged from one evaluation time)."""
    if shared is None or interval is None:
        return None
    if not_before is not None and shared.evaluated_at(now, interval) <= not_before:
        return None
    forms = {role: batch_form(template, values) for role, template in templates.items()}
    if any(form is None for form in forms.values()):
        return None
    return forms  # type: ignore[return-value]


class WouldWait(Exception):
    """A measurement asked not to wait needs a query this process does not hold."""


class _BatchFailed(Exception):
    """A batched query failed. Rejected by Prometheus (a 400 or 422: the batched
    form itself, e.g. too many samples), the criterion is asked per rollout instead;
    unanswered, it is an error verdict like any query Prometheus did not answer."""

    def __init__(self, error: MetricsError) -> None:
        super().__init__(str(error))
        self.error = error

    @property
    def rejected(self) -> bool:
        # Prometheus's own answers to a query it will not run: bad_data and execution
        # errors. A 408 or 429 (a proxy shedding load) is no answer, as a 5xx is.
        return self.error.status in (400, 422)


class _Asker:
    """Asks one criterion's queries: through ``shared`` answers when ``forms`` has
    them, per rollout otherwise; remembers which were shared and when evaluated.

    All of a criterion's shared answers come from one evaluation time, the first
    query's (the previous slot's while the slot's is fetched: ``SharedAnswers``), so
    its numbers are judged together."""

    def __init__(
        self,
        provider: MetricsProvider,
        now: datetime,
        shared: SharedAnswers | None,
        interval: timedelta | None,
        forms: dict[str, BatchedQuery],
        held_only: bool = False,
        not_before: datetime | None = None,
    ) -> None:
        self.provider = provider
        self.now = now
        self.shared = shared
        self.interval = interval or timedelta(0)
        self.forms = forms
        self.held_only = held_only
        self.not_before = not_before
        self.batched_at: datetime | None = None
        self.batched_roles: list[str] = []

    def instant(self, role: str, query: str) -> list[Sample]:
        batched = self.forms.get(role)
        if batched is None or self.shared is None:
            self._may_wait(query)
            return self.provider.instant(query, at=self.now)
        try:
            answer = self.shared.instant(
                batched, self.now, self.interval, *self._slot(), wait=not self.held_only
            )
        except MetricsError as exc:
            raise _BatchFailed(exc) from exc
        return self._batched(role, query, answer)

    def range(self, role: str, query: str, window: timedelta, step: timedelta) -> list[Series]:
        batched = self.forms.get(role)
        step_seconds = step.total_seconds()
        if batched is None or self.shared is None:
            self._may_wait(query)
            return self.provider.range(query, self.now - window, self.now, step_seconds)
        try:
            answer = self.shared.range(
                batched,
                self.now,
                window,
                step_seconds,
                self.interval,
                *self._slot(),
                wait=not self.held_only,
            )
        except MetricsError as exc:
            raise _BatchFailed(exc) from exc
        return self._batched(role, query, answer)

    def _slot(self) -> tuple[datetime | None, datetime | None]:
        """``not_before`` and the evaluation time the criterion's answers share."""
        return self.not_before, self.batched_at

    def _may_wait(self, query: str) -> None:
        if self.held_only:
            raise WouldWait(query)

    def _batched(self, role: str, query: str, answer: tuple[list, datetime] | None) -> list:
        if answer is None:
            raise WouldWait(query)
        values, evaluated_at = answer
        self.batched_roles.append(role)
        self.batched_at = evaluated_at
        return values


def measure_all(
    criteria: Sequence[Criterion],
    provider: MetricsProvider,
    variables: dict[str, str],
    default_window: timedelta,
    now: datetime,
    previous_baselines: dict[str, float] | None = None,
    shared: SharedAnswers | None = None,
    interval: timedelta | None = None,
    not_before: datetime | None = None,
) -> list[Measurement]:
    """``measure`` for each criterion, in the order given. A criterion that waits on
    Prometheus or Redis is measured on a thread of its own (``controller.background``):
    one after another a check would cost the sum of its queries (and, with
    Prometheus slow, of their timeouts). One whose shared answers this process holds
    already is measured here: most checks of a slot are that, and handing a few
    microseconds of judging to a thread and back cost more than the judging, in
    every process of a busy worker."""
    if not criteria:
        return []
    baselines = previous_baselines or {}

    def one(criterion: Criterion, held_only: bool = False) -> Measurement:
        return measure(
            criterion,
            provider,
            variables,
            default_window,
            now,
            previous_baseline=baselines.get(criterion.name),
            shared=shared,
            interval=interval,
            not_before=not_before,
            held_only=held_only,
        )

    measured: list[Measurement | Future[Measurement]] = []
    try:
        for criterion in criteria:
            if shared is not None:
                try:
                    measured.append(one(criterion, held_only=True))
                    continue
                except WouldWait:
                    pass
            measured.append(in_background(one, criterion))
        with timeouts.running("stop criteria"):
            results = [m.result() if isinstance(m, Future) else m for m in measured]
        return absent_failures_with_traffic(criteria, results)
    finally:
        # Out of time (the task's limit, raised in this thread) or done: never wait
        # for queries still running; each ends at its own timeout.
        for m in measured:
            if isinstance(m, Future):
                m.cancel()


# Each error or failure query and the total that says whether there was traffic.
_ERRORS_AND_TOTALS = {
    "canary_errors": "canary_total",
    "baseline_errors": "baseline_total",
    "errors": "total",
    "failures": "total",
}


def _absent_errors_as_zero(criterion: Criterion, inputs: dict[str, float | None]) -> list[str]:
    """A service whose error series appear only with the first error (labelled
    prometheus_client counters) returns no series for its error query while its total
    shows traffic: that is 0 errors, not missing data. Changes ``inputs`` in place and
    says what it counted; only where the plan allows it and the total is a real count
    above 0 (an absent or NaN total stays inconclusive)."""
    if not getattr(criterion, "absent_errors_are_zero", False):
        return []
    notes = []
    for errors, total in _ERRORS_AND_TOTALS.items():
        requests = inputs.get(total)
        if errors not in inputs or inputs[errors] is not None or requests is None:
            continue
        if math.isfinite(requests) and requests > 0:
            inputs[errors] = 0.0
            notes.append(f"no {errors} series while {total} shows {requests:g}: counted as 0")
    return notes


# The role of each counting judge that counts the canary's requests in the window.
_CANARY_REQUESTS = {
    "ratio_to_baseline": "canary_total",
    "ratio_threshold": "total",
    "zero_tolerance": "total",
}


@dataclass(frozen=True)
class _Traffic:
    """One check's evidence that the canary takes traffic: a criterion's count."""

    criterion: str
    role: str
    requests: float

    def __str__(self) -> str:
        return f"{self.criterion}'s {self.role} shows {self.requests:g} canary requests"


def canary_traffic(measurements: Sequence[Measurement]) -> _Traffic | None:
    """The largest count of canary requests any measurement of one check saw (a real,
    finite count above 0), or None."""
    seen = [
        _Traffic(m.criterion, role, value)
        for m in measurements
        if (role := _CANARY_REQUESTS.get(m.judge)) is not None
        and (value := m.inputs.get(role)) is not None
        and math.isfinite(value)
        and value > 0
    ]
    return max(seen, key=lambda t: t.requests, default=None)


def absent_failures_with_traffic(
    criteria: Sequence[Criterion], measurements: list[Measurement]
) -> list[Measurement]:
    """The check's measurements, with each zero_tolerance criterion that has no
    ``total`` and found no failures series judged as 0 failures when another
    criterion of the same check shows the canary taking traffic.

    A service whose failure counter appears with its first failure answers "any
    failed write" (``sum(increase(failures[30s]))``) with no series for as long as
    it is healthy. Alone, such a criterion cannot tell that from no traffic at all,
    and a healthy canary would pause on "no data" for ever. The same check knows
    better: the 5xx criterion's total counted the canary's requests. Without such a
    count (or below the criterion's ``min_requests``) it stays inconclusive, saying
    why. Same order and length as ``measurements``."""
    by_name = {c.name: c for c in criteria}
    traffic = canary_traffic(measurements)
    return [_failures_counted(by_name.get(m.criterion), m, traffic) for m in measurements]


def _failures_counted(
    criterion: Criterion | None, m: Measurement, traffic: _Traffic | None
) -> Measurement:
    if not (
        isinstance(criterion, ZeroTolerance)
        and criterion.total is None
        and criterion.absent_errors_are_zero
        and m.verdict == Verdict.INCONCLUSIVE
        and "failures" in m.inputs
        and m.inputs["failures"] is None
    ):
        return m
    if traffic is None:
        why = "no failures series, and no criterion of this check counted canary requests"
        return replace(m, judgement=_with_reason(m.judgement, why))
    if traffic.requests < criterion.min_requests:
        why = f"no failures series, and {traffic}, fewer than min_requests {criterion.min_requests}"
        return replace(m, judgement=_with_reason(m.judgement, why))
    counted = judges.zero_tolerance(criterion, 0.0, None)
    note = f"no failures series while {traffic} in the same check: counted as 0"
    return replace(m, inputs={**m.inputs, "failures": 0.0}, judgement=_with_notes(counted, [note]))


def _with_reason(judgement: Judgement, why: str) -> Judgement:
    return replace(judgement, reason=f"{judgement.reason} ({why})")


def _with_notes(judgement: Judgement, notes: list[str]) -> Judgement:
    if not notes:
        return judgement
    return replace(
        judgement,
        reason=f"{judgement.reason} ({'; '.join(notes)})",
        details={**judgement.details, "absent_counted_as_zero": float(len(notes))},
    )


def _judge_scalars(
    criterion: Criterion, inputs: dict[str, float | None], previous_baseline: float | None
) -> Judgement:
    if isinstance(criterion, RatioToBaseline):
        return judges.ratio_to_baseline(
            criterion,
            inputs["canary_errors"],
            inputs["canary_total"],
            inputs["baseline_errors"],
            inputs["baseline_total"],
            previous_baseline=previous_baseline,
        )
    if isinstance(criterion, RatioThreshold):
        return judges.ratio_threshold(criterion, inputs["errors"], inputs["total"])
    if isinstance(criterion, LatencyToBaseline):
        return judges.latency_to_baseline(
            criterion,
            inputs["canary_latency"],
            inputs["baseline_latency"],
            previous_baseline=previous_baseline,
        )
    return judges.zero_tolerance(criterion, inputs["failures"], inputs.get("total"))
