"""Rollback: put all traffic back on the stable version, and prove it.

Rollback beats everything. It moves traffic first, without waiting for any lease,
because every second on a bad canary hurts users. Then it takes the lease, so that
an advance still in flight cannot have moved traffic back behind its back, reads
the router again and only then records the rollout as rolled back. If the router
will not confirm, the rollout is ``rollback_failed``, loudly, and retried; it is
never reported as rolled back. A retry that cannot succeed (a missing backend) is
ended by a person with ``canary resolve`` (``controller.operations.resolve_rollout``),
after which a retry still in flight finds nothing to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import update
from sqlalchemy.orm import Session

from controller import outbox
from controller.engine import rollout_variables
from controller.plan import Plan
from controller.runtime import Runtime
from controller.slots import version_mismatches
from controller.stable_restore import RECHECK as RESTORE_RECHECK
from controller.stable_restore import needs_stable_restored, restore_stable
from controller.store import repository
from controller.store.models import ROLLBACK_STATES, Rollout, RolloutState
from controller.stored_plans import plan_of
from controller.traffic.base import RouterError, TrafficRouter
from controller.views import resolve_hint

log = structlog.get_logger(__name__)

ACTOR = "rollback"
RETRY_FAILED_ROLLBACK_SECONDS = 15


@dataclass(frozen=True)
class RollbackResult:
    rollout_id: str
    acted: bool
    state: str | None = None
    summary: str = ""

    def sentence(self) -> str:
        return f"{self.rollout_id} {self.state or '-'}: {self.summary}"


@dataclass(frozen=True)
class ShiftOutcome:
    confirmed: bool
    attempts: int
    error: str | None


def shift_to_stable(router: TrafficRouter, attempts: int, backoff_seconds: float) -> ShiftOutcome:
    """Set the canary weight to 0 until the router reads back 0, with exponential backoff."""
    error = None
    for attempt in range(1, attempts + 1):
        try:
            router.set_canary_weight(0)
            weight = router.get_canary_weight()
            if weight == 0:
                return ShiftOutcome(True, attempt, None)
            error = f"router reads back {weight}% for the canary after setting 0%"
        except RouterError as exc:
            error = str(exc)
        if attempt < attempts:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
    return ShiftOutcome(False, attempts, error)


def rollback(runtime: Runtime, rollout_id: str) -> RollbackResult:
    """Run the rollback of a rollout marked ``rolling_back`` (or retry a failed one)."""
    with runtime.sessions() as session:
        rollout = repository.get_rollout(session, rollout_id)
        if rollout is None or rollout.state not in ROLLBACK_STATES:
            return RollbackResult(
                rollout_id, False, rollout.state if rollout else None, "nothing to roll back"
            )
        bound = log.bind(rollout_id=rollout.id, service=rollout.service)
        shift_started = runtime.clock()
        router: TrafficRouter | None = None
        try:
            plan = plan_of(rollout)
            router = runtime.router_for(plan, rollout_variables(plan, rollout))
        except Exception as exc:  # a broken plan must end in rollback_failed, loudly
            shift = ShiftOutcome(False, 0, f"cannot build the router: {exc}")
        else:
            if needs_stable_restored(plan, rollout):
                session.rollback()
                restoring = router
                return _under_lease(
                    runtime,
                    session,
                    rollout_id,
                    (shift_started, shift_started),
                    lambda claimed, aftercare: _restore_step(
                        runtime, session, claimed, plan, restoring, aftercare, bound
                    ),
                    "an advance in flight still holds the rollout: the stable version is put "
                    "back at the next dispatch, in about a second",
                )
            shift = shift_to_stable(
                router, runtime.rollback_attempts, runtime.rollback_backoff_seconds
            )
        shifted_at = runtime.clock()
        bound.info(
            "traffic_shift", confirmed=shift.confirmed, attempts=shift.attempts, error=shift.error
        )
        session.rollback()
        return _under_lease(
            runtime,
            session,
            rollout_id,
            (shift_started, shifted_at),
            lambda claimed, aftercare: _settle(
                runtime, session, claimed, router, shift, aftercare, bound
            )[0],
            ("traffic on stable" if shift.confirmed else f"traffic NOT shifted: {shift.error}")
            + "; an advance in flight still holds the rollout: settled at the next "
            "dispatch, in about a second",
        )


def _under_lease(
    runtime: Runtime,
    session: Session,
    rollout_id: str,
    shift_times: tuple[datetime, datetime],
    settle: Callable[[Rollout, _Aftercare], RollbackResult],
    busy: str,
) -> RollbackResult:
    """Take the lease, so that an advance still in flight cannot have moved traffic
    behind the rollback's back, then ``settle`` and send what it promised. An advance
    that holds the lease past the wait sends the rollback round again (``busy``)."""
    claimed = _take_lease(runtime, session, rollout_id)
    if claimed is None:
        ended = _ended_meanwhile(session, rollout_id)
        if ended is not None:
            return ended
        _come_back_soon(runtime, session, rollout_id)
        return RollbackResult(rollout_id, False, RolloutState.ROLLING_BACK, busy)
    # Whether this is the first attempt is read under the lease: two deliveries of
    # one rollback must not both take it for the first (two runbooks promised).
    aftercare = _Aftercare(claimed.state == RolloutState.ROLLING_BACK, *shift_times)
    try:
        result = settle(claimed, aftercare)
    finally:
        session.rollback()
        repository.release(session, rollout_id, runtime.owner)
    outbox.dispatch_now(runtime, aftercare.promised)
    return result


def _restore_step(
    runtime: Runtime,
    session: Session,
    rollout: Rollout,
    plan: Plan,
    router: TrafficRouter,
    aftercare: _Aftercare,
    bound: structlog.typing.FilteringBoundLogger,
) -> RollbackResult:
    """One look at the restore; the shift and its record once the slot is ready."""
    now = runtime.clock()
    restore, analysis = restore_stable(plan, rollout, router, now)
    rollout.analysis = analysis
    for kind, message, data in restore.events:
        repository.append_event(
            session,
            rollout.id,
            kind,
            actor=ACTOR,
            at=now,
            message=message,
            data=data,
            step_index=rollout.step_index,
        )
    if restore.ready:
        aftercare.shift_started = runtime.clock()
        shift = shift_to_stable(router, runtime.rollback_attempts, runtime.rollback_backoff_seconds)
        aftercare.shifted_at = runtime.clock()
        bound.info(
            "traffic_shift", confirmed=shift.confirmed, attempts=shift.attempts, restored=True
        )
        result, _ = _settle(runtime, session, rollout, router, shift, aftercare, bound)
        return result
    if restore.failed and rollout.state == RolloutState.ROLLING_BACK:
        failed = ShiftOutcome(False, 0, restore.failed)
        result, _ = _settle(runtime, session, rollout, router, failed, aftercare, bound)
        return result
    rollout.next_check_at = now + RESTORE_RECHECK
    rollout.updated_at = now
    session.commit()
    bound.warning("stable_restore_waiting", waiting=restore.waiting)
    return RollbackResult(
        rollout.id,
        True,
        rollout.state,
        f"putting the stable version back before traffic moves: {restore.waiting}",
    )


@dataclass
class _Aftercare:
    """What a settled rollback promises, in the same transaction: the runbook (steps
    2-5, on their own queue: they never touch traffic and must not hold the rollback
    queue) and the lifecycle notification."""

    first_attempt: bool
    shift_started: datetime
    shifted_at: datetime
    promised: list[tuple[int, str, str]] = field(default_factory=list)

    def promise(self, session: Session, rollout: Rollout, shift: ShiftOutcome) -> None:
        if not (shift.confirmed or self.first_attempt):
            return  # a retry of a failed rollback: the runbook and the alert went out once
        now = self.shifted_at
        detail = (
            f"canary weight 0% read back after {shift.attempts} attempt(s)"
            if shift.confirmed
            else f"not confirmed: {shift.error}"
        )
        payload = {
            "shift_started": self.shift_started.isoformat(),
            "shifted_at": self.shifted_at.isoformat(),
            "shift_detail": detail,
            "traffic_on_stable": shift.confirmed,
        }
        runbook = outbox.promise_runbook(session, rollout, payload, now)
        self.promised.append((runbook, "runbook", rollout.id))
        if plan_of(rollout).notifications:
            kind = "rolled_back" if shift.confirmed else "rollback_failed"
            notify = outbox.promise_notification(session, rollout.id, kind, now)
            self.promised.append((notify, "notify", rollout.id))


def require_reconciliation_after_failed_writes(
    session: Session, rollout: Rollout, now: datetime, actor: str = ACTOR
) -> None:
    """A rollback tripped by a failed-writes criterion (judge ``zero_tolerance``) leaves
    data to reconcile (release checklist §3.3): the next rollout of the service blocks
    until someone records that it was done."""
    if not rollout.tripped_criterion:
        return
    plan = plan_of(rollout)
    criterion = next((c for c in plan.stop_criteria if c.name == rollout.tripped_criterion), None)
    if criterion is None or criterion.judge != "zero_tolerance":
        return
    reason = f"{criterion.name} tripped"
    repository.require_reconciliation(session, rollout, reason, now)
    repository.append_event(
        session,
        rollout.id,
        "reconciliation_required",
        actor=actor,
        at=now,
        message=f"{criterion.name} tripped: reconcile {rollout.service}'s data, then record "
        f"it with `canary reconcile-done {rollout.service} --note ...`; the next rollout "
        "of the service waits for it",
        data={"service": rollout.service, "criterion": criterion.name},
    )


LEASE_WAIT_SECONDS = 1.0  # then give the rollback queue to the next rollback


def _take_lease(runtime: Runtime, session: Session, rollout_id: str) -> Rollout | None:
    """Take the lease, waiting a moment for an advance in flight to let go. Never
    long: other services' rollbacks queue behind this one."""
    deadline = time.monotonic() + LEASE_WAIT_SECONDS
    while True:
        claimed = repository.claim(
            session, rollout_id, runtime.owner, runtime.clock(), runtime.lease, ROLLBACK_STATES
        )
        if claimed is not None or time.monotonic() > deadline:
            return claimed
        current = repository.get_rollout(session, rollout_id)
        if current is None or current.state not in ROLLBACK_STATES:
            return None  # another rollback finished it
        session.rollback()
        time.sleep(0.05)


def _ended_meanwhile(session: Session, rollout_id: str) -> RollbackResult | None:
    """A rollout no longer rolling back (a person resolved it while this attempt
    shifted traffic): its record is theirs, and this attempt writes nothing."""
    session.rollback()
    current = repository.get_rollout(session, rollout_id)
    if current is not None and current.state in ROLLBACK_STATES:
        return None
    state = current.state if current is not None else None
    return RollbackResult(rollout_id, False, state, f"ended meanwhile ({state}); nothing recorded")


def _come_back_soon(runtime: Runtime, session: Session, rollout_id: str) -> None:
    """Make reconcile dispatch this rollback again shortly: the traffic is shifted
    already (the shift is repeated, idempotent), only the record waits for the lease."""
    session.rollback()
    session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.state.in_([str(s) for s in ROLLBACK_STATES]))
        .values(next_check_at=runtime.clock() + timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _settle(
    runtime: Runtime,
    session: Session,
    rollout: Rollout,
    router: TrafficRouter | None,
    shift: ShiftOutcome,
    aftercare: _Aftercare,
    bound: structlog.typing.FilteringBoundLogger,
) -> tuple[RollbackResult, ShiftOutcome]:
    """Confirm traffic under the lease and record the outcome, with what it promises."""
    shifted_at = aftercare.shifted_at
    if shift.confirmed and router is not None:
        # An advance that held the lease may have moved traffic after our shift.
        try:
            if router.get_canary_weight() != 0:
                shift = shift_to_stable(
                    router, runtime.rollback_attempts, runtime.rollback_backoff_seconds
                )
        except RouterError:
            shift = shift_to_stable(
                router, runtime.rollback_attempts, runtime.rollback_backoff_seconds
            )
    if shift.confirmed:
        wrong = _stable_version_problem(rollout)
        if wrong:
            rollout.weight = 0  # the router reads 0: the record says so
            shift = ShiftOutcome(
                False, shift.attempts, f"all traffic is on the stable slot, but {wrong}"
            )
    now = runtime.clock()
    previous_weight = rollout.weight
    if not shift.confirmed:
        rollout.state = RolloutState.ROLLBACK_FAILED
        rollout.next_check_at = now + timedelta(seconds=RETRY_FAILED_ROLLBACK_SECONDS)
        rollout.updated_at = now
        # One rollback_failed per rollback; its retries are recorded as such.
        first = aftercare.first_attempt
        repository.append_event(
            session,
            rollout.id,
            "rollback_failed" if first else "rollback_retry_failed",
            actor=ACTOR,
            at=now,
            message=("ROLLBACK FAILED" if first else "rollback retry failed")
            + f": traffic is NOT confirmed on stable {rollout.stable_version} after "
            f"{shift.attempts} attempts: {shift.error}; retrying in "
            f"{RETRY_FAILED_ROLLBACK_SECONDS}s. If the router cannot be fixed for the "
            f"controller: {resolve_hint(rollout.id)}",
            data={"attempts": shift.attempts, "error": shift.error},
            step_index=rollout.step_index,
        )
        aftercare.promise(session, rollout, shift)
        session.commit()
        bound.error("rollback_failed", attempts=shift.attempts, error=shift.error)
        failed = RollbackResult(
            rollout.id,
            True,
            rollout.state,
            f"rollback failed: {shift.error}; retrying, or {resolve_hint(rollout.id)}",
        )
        return failed, shift

    final = (rollout.analysis or {}).get("final_state", RolloutState.ROLLED_BACK)
    rollout.state = final
    rollout.weight = 0
    rollout.finished_at = now
    rollout.updated_at = now
    _record_time_to_stable(rollout, shifted_at)
    require_reconciliation_after_failed_writes(session, rollout, now)
    repository.append_event(
        session,
        rollout.id,
        "weight_set",
        actor=ACTOR,
        at=shifted_at,
        message=f"rollback: canary weight {previous_weight}% -> 0% (read back from the router), "
        f"all traffic on stable {rollout.stable_version}",
        data={
            "weight": 0,
            "previous": previous_weight,
            "attempts": shift.attempts,
            "rollback": True,
        },
        step_index=rollout.step_index,
    )
    repository.append_event(
        session,
        rollout.id,
        "decision",
        actor=ACTOR,
        at=now,
        message=f"rollout {final.replace('_', ' ')}: {rollout.reason}",
        data={
            "decision": str(final),
            "reason": rollout.reason,
            "tripped": rollout.tripped_criterion,
        },
        step_index=rollout.step_index,
    )
    stable_down = _stable_problem(router)
    if stable_down:
        repository.append_event(
            session,
            rollout.id,
            "stable_unavailable",
            actor=ACTOR,
            at=now,
            message=f"all traffic is on stable {rollout.stable_version}, but {stable_down}: "
            "users get errors until the stable service is healthy again",
            data={"error": stable_down},
            step_index=rollout.step_index,
        )
        bound.error("stable_unavailable", error=stable_down)
    aftercare.promise(session, rollout, shift)
    session.commit()
    bound.warning("rolled_back", state=str(final), reason=rollout.reason)
    return RollbackResult(rollout.id, True, str(final), f"traffic on stable; {final}"), shift


def _stable_version_problem(rollout: Rollout) -> str | None:
    """With a version check in the plan: whether the stable slot answers the stable
    version at its own address. A rollback ends on a server that serves the stable
    version, read from the server itself, not on whatever the stable slot holds."""
    plan = plan_of(rollout)
    if plan.traffic.version_check is None:
        return None
    values = rollout_variables(plan, rollout)
    wrong = version_mismatches(plan, values, {"stable": rollout.stable_version})
    return "; ".join(wrong) or None


def _stable_problem(router: TrafficRouter | None) -> str | None:
    """After the shift: whether the router holds the stable side down. A rollback never
    waits for it (there is nowhere better to send users), but on-call must hear that
    the stable service itself is failing. Not asked before the shift: it never delays
    it."""
    if router is None:
        return None
    try:
        return router.serving("stable").problem
    except Exception as exc:  # the shift was read back: this is no verdict, and never fatal
        log.warning("stable_state_unread", error=str(exc))
        return None


def _record_time_to_stable(rollout: Rollout, shifted_at: datetime) -> None:
    """From the trigger (an alert's arrival, a tripped check) to traffic confirmed on
    stable, kept on the rollout: ``/metrics`` sums it without reading events."""
    analysis = dict(rollout.analysis or {})
    trigger = dict(analysis.get("trigger") or {})
    if not trigger.get("at"):
        return
    seconds = (shifted_at - datetime.fromisoformat(trigger["at"])).total_seconds()
    trigger["stable_after_seconds"] = round(max(0.0, seconds), 3)
    analysis["trigger"] = trigger
    rollout.analysis = analysis
