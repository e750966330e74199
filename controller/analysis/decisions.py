"""The controller's decision rules over measurements, as pure functions.

The engine applies them to a stored rollout and ``canary backtest`` to a replay of
Prometheus history; keeping the rules here, with no store and no clock, is what
makes a backtest say what the controller would really have done.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.analysis.runner import Measurement
from controller.analysis.verdict import Verdict
from controller.plan import AnalysisPolicy, Criterion


@dataclass(frozen=True)
class Trip:
    """A criterion whose failure has lasted its ``sustained_for``: a rollback."""

    criterion: Criterion
    measurement: Measurement
    lasted: timedelta


def update_breaches(
    breaches: Mapping[str, str | None],
    measurements: Iterable[Measurement],
    criteria_by_name: Mapping[str, Criterion],
    now: datetime,
) -> tuple[dict[str, str | None], list[Trip]]:
    """The breaches after one check, and the criteria that trip at it.

    ``breaches`` maps a criterion to when its breach began (ISO 8601, the form the
    rollout row keeps) or None. A pass ends a breach; a failure begins one or goes
    on with it and trips once it has lasted ``sustained_for``; inconclusive and error
    checks neither end nor extend it, so a gap in the data cannot hide a breach that
    is still going on. Measurements of no criterion (the slot version check) never
    trip. ``breaches`` itself is not changed.
    """
    updated = dict(breaches)
    tripped = []
    for m in measurements:
        criterion = criteria_by_name.get(m.criterion)
        if criterion is None:
            continue
        if m.verdict == Verdict.PASS:
            updated[m.criterion] = None
        elif m.verdict == Verdict.FAIL:
            since = updated.get(m.criterion)
            started = datetime.fromisoformat(since) if since else now
            updated[m.criterion] = started.isoformat()
            lasted = now - started
            if lasted >= criterion.sustained_for:
                tripped.append(Trip(criterion, m, lasted))
    return updated, tripped


@dataclass(frozen=True)
class Streaks:
    """Checks in a row with an error verdict, and with an inconclusive one."""

    error: int = 0
    inconclusive: int = 0


def missing_data_streaks(
    streaks: Streaks, measurements: Iterable[Measurement], limits: AnalysisPolicy
) -> tuple[Streaks, str | None]:
    """The streaks after one check, and why the plan's ``on_limit`` now applies (None
    while under both limits).

    A check counts toward a streak when any of its measurements has that verdict,
    and a check without one ends it: missing data is never a pass, but only a long
    run of it should take a decision out of the controller's hands. The reason names
    every criterion of the last check with that verdict and why: the person the
    rollout pauses for must know which query to look at.
    """
    measured = list(measurements)
    verdicts = {m.verdict for m in measured}
    after = Streaks(
        error=streaks.error + 1 if Verdict.ERROR in verdicts else 0,
        inconclusive=streaks.inconclusive + 1 if Verdict.INCONCLUSIVE in verdicts else 0,
    )
    if after.error >= limits.error_limit:
        return after, (
            f"{after.error} checks in a row ended in an error "
            f"(last: {_named(measured, Verdict.ERROR)})"
        )
    if after.inconclusive >= limits.inconclusive_limit:
        return after, (
            f"{after.inconclusive} checks in a row were inconclusive "
            f"(last: {_named(measured, Verdict.INCONCLUSIVE)})"
        )
    return after, None


def _named(measurements: list[Measurement], verdict: Verdict) -> str:
    """``criterion: reason`` for each measurement with ``verdict``, in the check's order."""
    return "; ".join(
        f"{m.criterion}: {m.judgement.reason}" for m in measurements if m.verdict == verdict
    )
