"""The controller's own metrics, read from the store at scrape time.

Computing them from the database, rather than counting in each process, is what
makes every figure on a dashboard agree with ``canary status`` and the event log:
there is one source. The API serves them on ``/metrics``; the workers serve their
own task counters (see ``tasks.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from controller.durations import parse_duration
from controller.plan import AnalysisPolicy
from controller.reconcile.stalled import last_run_age
from controller.runtime import utcnow
from controller.store.models import (
    ACTIVE_STATES,
    ADVANCING_STATES,
    ROLLBACK_STATES,
    MeasurementTotal,
    Rollout,
    RolloutState,
)

# A plan stored before it had a progress_deadline gets the default.
DEFAULT_DEADLINE = AnalysisPolicy.model_fields["progress_deadline"].default

ROLLED_BACK_STATES = (
    RolloutState.ROLLED_BACK,
    RolloutState.ABORTED,
    RolloutState.ROLLBACK_FAILED,
    RolloutState.ROLLING_BACK,
)


class StoreCollector(Collector):
    """Rollouts by state, weights, measurements, rollbacks and lags, from the store."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            now = utcnow()
            yield self._by_state(session)
            yield from self._active(session)
            yield self._measurements(session)
            yield from self._rollbacks(session)
            yield self._reconcile_lag(session, now)
            yield self._reconcile_last_run(session, now)
            yield from self._held(session, now)

    @staticmethod
    def _by_state(session: Session) -> Metric:
        family = GaugeMetricFamily("canary_rollouts", "Rollouts by state.", labels=["state"])
        rows = session.execute(select(Rollout.state, func.count()).group_by(Rollout.state))
        counts = {state: count for state, count in rows}
        for state in RolloutState:
            family.add_metric([state.value], counts.get(state.value, 0))
        return family

    @staticmethod
    def _active(session: Session) -> Iterator[Metric]:
        weight = GaugeMetricFamily(
            "canary_rollout_weight",
            "Canary traffic percent, as read back from the router.",
            labels=["rollout_id", "service", "version", "state"],
        )
        value = GaugeMetricFamily(
            "canary_criterion_value",
            "Last measured value of each stop criterion.",
            labels=["rollout_id", "service", "criterion", "verdict"],
        )
        limit = GaugeMetricFamily(
            "canary_criterion_limit",
            "Limit of each stop criterion at its last measurement.",
            labels=["rollout_id", "service", "criterion"],
        )
        # Only the columns shown: a rollout's plan is kilobytes of JSON to parse.
        rollouts = session.execute(
            select(
                Rollout.id,
                Rollout.service,
                Rollout.canary_version,
                Rollout.state,
                Rollout.weight,
                Rollout.analysis,
            ).where(Rollout.state.in_([str(s) for s in ACTIVE_STATES]))
        ).all()
        for rollout in rollouts:
            if rollout.weight is not None:
                weight.add_metric(
                    [rollout.id, rollout.service, rollout.canary_version, rollout.state],
                    rollout.weight,
                )
            latest = (rollout.analysis or {}).get("last_measured", {})
            for name, data in latest.items():
                if isinstance(data.get("value"), int | float):
                    value.add_metric(
                        [rollout.id, rollout.service, name, data["verdict"]], data["value"]
                    )
                if isinstance(data.get("limit"), int | float):
                    limit.add_metric([rollout.id, rollout.service, name], data["limit"])
        yield weight
        yield value
        yield limit

    @staticmethod
    def _measurements(session: Session) -> Metric:
        family = CounterMetricFamily(
            "canary_measurements",
            "Measurements by criterion and verdict.",
            labels=["criterion", "verdict"],
        )
        rows = session.execute(
            select(
                MeasurementTotal.criterion,
                MeasurementTotal.verdict,
                func.sum(MeasurementTotal.count),
            ).group_by(MeasurementTotal.criterion, MeasurementTotal.verdict)
        )
        for name, outcome, count in rows:
            family.add_metric([name or "", outcome or ""], count)
        return family

    @staticmethod
    def _rollbacks(session: Session) -> Iterator[Metric]:
        by_reason = GaugeMetricFamily(
            "canary_rollbacks",
            "Rollbacks by what triggered them (criterion, alert, manual, "
            "policy) and the tripped criterion.",
            labels=["trigger", "criterion", "state"],
        )
        latency = SummaryMetricFamily(
            "canary_alert_to_rollback_seconds",
            "From an alert-triggered rollback request to traffic confirmed on stable.",
        )
        rolled_back = Rollout.state.in_([str(s) for s in ROLLED_BACK_STATES])
        trigger_kind = Rollout.analysis[("trigger", "kind")].as_string()
        rows = session.execute(
            select(trigger_kind, Rollout.tripped_criterion, Rollout.state, func.count())
            .where(rolled_back)
            .group_by(trigger_kind, Rollout.tripped_criterion, Rollout.state)
        )
        for kind, criterion, state, count in rows:
            by_reason.add_metric([kind or "unknown", criterion or "", state], count)
        # Kept on each rollout by the rollback (controller.rollback), summed here.
        to_stable = Rollout.analysis[("trigger", "stable_after_seconds")].as_float()
        total, seconds = session.execute(
            select(func.count(to_stable), func.coalesce(func.sum(to_stable), 0.0)).where(
                rolled_back, trigger_kind == "alert"
            )
        ).one()
        latency.add_metric([], count_value=total, sum_value=float(seconds))
        yield by_reason
        yield latency

    @staticmethod
    def _held(session: Session, now: datetime) -> Iterator[Metric]:
        """How long rollouts have been stuck where a human must act: held with traffic
        (paused, blocked, awaiting approval) and rolling back."""
        waiting = GaugeMetricFamily(
            "canary_rollout_waiting_seconds",
            "Seconds a rollout has sat paused or blocked while its canary carries traffic.",
            labels=["rollout_id", "service", "state"],
        )
        deadline = GaugeMetricFamily(
            "canary_rollout_progress_deadline_seconds",
            "The plan's progress_deadline of a rollout held with canary traffic: the "
            "CanaryRolloutHeldWithTraffic alert compares the waiting time with it.",
            labels=["rollout_id", "service"],
        )
        rolling_back = GaugeMetricFamily(
            "canary_rollout_rolling_back_seconds",
            "Seconds since a rollback that has not yet confirmed traffic on stable was asked.",
            labels=["rollout_id", "service", "state"],
        )
        held = [RolloutState.PAUSED, RolloutState.BLOCKED, *ROLLBACK_STATES]
        for rollout in session.execute(
            select(
                Rollout.id,
                Rollout.service,
                Rollout.state,
                Rollout.weight,
                Rollout.analysis,
                # Only the one field: parsing each held rollout's whole plan on every
                # scrape would cost milliseconds a rollout.
                Rollout.plan[("analysis", "progress_deadline")].as_string().label("deadline"),
            ).where(Rollout.state.in_([str(s) for s in held]))
        ):
            analysis = rollout.analysis or {}
            labels = [rollout.id, rollout.service, rollout.state]
            if rollout.state in ROLLBACK_STATES:
                since = (analysis.get("trigger") or {}).get("at")
                family = rolling_back
            elif rollout.weight and analysis.get("waiting_since"):
                since, family = analysis["waiting_since"], waiting
                limit = parse_duration(rollout.deadline) if rollout.deadline else DEFAULT_DEADLINE
                deadline.add_metric([rollout.id, rollout.service], limit.total_seconds())
            else:
                continue
            if since:
                seconds = (now - datetime.fromisoformat(since)).total_seconds()
                family.add_metric(labels, max(0.0, seconds))
        yield waiting
        yield deadline
        yield rolling_back

    @staticmethod
    def _reconcile_lag(session: Session, now: datetime) -> Metric:
        watched = or_(
            Rollout.state.in_([str(s) for s in ADVANCING_STATES]),
            and_(Rollout.state == RolloutState.PAUSED, Rollout.weight > 0),
        )
        oldest = session.scalar(select(func.min(Rollout.next_check_at)).where(watched))
        lag = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        return GaugeMetricFamily(
            "canary_reconcile_lag_seconds",
            "How overdue the most overdue rollout check is (0 when none is due).",
            value=lag,
        )

    @staticmethod
    def _reconcile_last_run(session: Session, now: datetime) -> Metric:
        """From the row each reconcile run writes: unlike the lag, it grows with no
        rollout due too, so nothing consuming the reconcile queue is seen before a
        rollout waits on it."""
        return GaugeMetricFamily(
            "canary_reconcile_last_run_age_seconds",
            "Seconds since a reconcile task last ran (+Inf if none ever has).",
            value=last_run_age(session, now),
        )
