"""What people do to rollouts (start, abort, resolve), with the checks that keep bad
input out.

The CLI and, later, the HTTP API are thin layers over these functions, so a rule
like "one active rollout per service" holds whichever door a request comes in by.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller import outbox
from controller.plan import Plan
from controller.rollback import require_reconciliation_after_failed_writes
from controller.runtime import RouterFactory
from controller.slots import (
    Slots,
    rollout_values,
    router_names_problem,
    router_state_problem,
    slots_for_new_rollout,
    slots_of,
    template_values,
    version_mismatches,
)
from controller.store import repository
from controller.store.models import (
    ACTIVE_STATES,
    FINAL_STATES,
    Outbox,
    Rollout,
    RolloutState,
)
from controller.stored_plans import plan_of
from controller.traffic.base import RouterError
from controller.url_policy import HostPolicy, url_problems
from controller.views import way_out

# Service names and versions end up inside PromQL label matchers and HAProxy
# commands: a quote or a space there would change the query, so refuse them.
_VARIABLE_VALUE = re.compile(r"^[A-Za-z0-9_.:/@%+=,~-]{0,2000}$")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")


class OperationError(Exception):
    """A request that cannot be carried out; the message says which field and why."""


class OperationConflict(OperationError):
    """Refused by the state of things, not by the input: another rollout of the
    service is active, the router is not as the store expects (the API's 409, the
    CLI's exit 1)."""


class OperationUnavailable(OperationError):
    """A server the request needs (the router) cannot be reached; nothing was done,
    the same request may succeed later (the API's 503, the CLI's exit 4)."""


def check_identifier(field: str, value: str) -> str:
    if not _IDENTIFIER.fullmatch(value or ""):
        raise OperationError(
            f"{field}: {value!r} is not allowed: use 1-128 letters, digits and . _ : + - "
            "(it is used inside PromQL label matchers)"
        )
    return value


def stable_version_of(session: Session, service: str) -> str | None:
    """The service's stable release (marked by a verified rollout, or the version the
    last successful rollout left serving all traffic)."""
    release = repository.stable_release(session, service)
    if release is not None:
        return release.stable_version
    return session.scalars(
        select(Rollout.canary_version)
        .where(Rollout.service == service, Rollout.state == RolloutState.SUCCEEDED)
        .order_by(Rollout.finished_at.desc())
        .limit(1)
    ).first()


def start_rollout(
    session: Session,
    plan: Plan,
    *,
    service: str,
    version: str,
    stable: str | None,
    created_by: str,
    now: datetime,
    router_for: RouterFactory,
    variables: dict[str, str] | None = None,
    force_reason: str | None = None,
    url_policy: HostPolicy | None = None,
    plan_origin: str | None = None,
) -> Rollout:
    """Record a new rollout; the reconcile loop picks it up within seconds.

    Every URL the rollout would call, rendered with its values, must pass
    ``url_policy`` (by default: no link-local or cloud metadata address).

    The rollout starts only from the state the store expects: its stable version is
    the service's recorded stable release, and the router gives the stable slot all
    traffic and the other slot none. ``force_reason`` (an admin's) starts it anyway
    and is recorded with what the router showed.
    """
    check_identifier("service", service)
    for name, value in (variables or {}).items():
        problem = plan.override_problem(name, value)
        if problem:
            raise OperationError(f"variables.{name}: {problem}")
        if not _VARIABLE_VALUE.fullmatch(value):
            raise OperationError(
                f"variables.{name}: use up to 2000 characters of letters, digits and "
                "_ . : / @ % + = , ~ - (it is placed inside URLs, queries and commands)"
            )
    check_identifier("version", version)
    if force_reason is not None and not force_reason.strip():
        raise OperationError("force: say why the expected state is overridden")
    recorded = stable_version_of(session, service)
    if stable is None:
        stable = recorded
        if stable is None:
            raise OperationError(
                f"stable: no stable version of {service} is known yet (no succeeded rollout); "
                "pass --stable VERSION"
            )
    check_identifier("stable", stable)
    if stable == version:
        raise OperationError(f"version: {version} is already the stable version of {service}")
    if recorded is not None and stable != recorded and force_reason is None:
        raise OperationError(
            f"stable: the store records {recorded} as the stable version of {service}, "
            f"not {stable}; leave --stable out, or force with a reason"
        )
    slots = slots_for_new_rollout(plan, repository.stable_release(session, service))
    values = template_values(
        plan,
        service=service,
        canary_version=version,
        stable_version=stable,
        slots=slots,
        overrides=variables,
    )
    refused = url_problems(plan, values, url_policy or HostPolicy())
    if refused:
        raise OperationError("; ".join(refused))
    backend_problem = router_names_problem(plan, values)
    if backend_problem:
        raise OperationError(backend_problem)
    # Before the router: a start no retry could make succeed is told so at once.
    active = session.execute(
        select(Rollout.id, Rollout.state).where(
            Rollout.service == service, Rollout.state.in_([str(s) for s in ACTIVE_STATES])
        )
    ).first()
    if active:
        raise OperationConflict(
            f"service: {service} already has an active rollout ({active.id}); "
            + (way_out(active.id, active.state) or "abort it or wait for it to finish")
        )
    try:
        problem = router_state_problem(router_for(plan, values), slots)
    except RouterError as exc:
        problem = f"cannot read the router: {exc}"
        if force_reason is None:
            raise OperationUnavailable(
                f"router: {problem}. Nothing was started; retry once it answers, or force "
                "with a reason (admin)"
            ) from None
    if problem and force_reason is None:
        raise OperationConflict(
            f"router: {problem}. Nothing was started; put the router back, or force with "
            "a reason (admin)"
        )
    try:
        rollout = _record_start(
            session,
            plan,
            service=service,
            version=version,
            stable=stable,
            slots=slots,
            created_by=created_by,
            now=now,
            variables=variables or {},
            forced=(force_reason, problem, recorded) if force_reason is not None else None,
            plan_origin=plan_origin,
        )
    except IntegrityError:
        # Another start of the same service won the race between our check and our
        # insert: the database's one-active-rollout index refused this one.
        session.rollback()
        raise OperationConflict(
            f"service: {service} already has an active rollout (started concurrently); "
            "abort it or wait for it to finish"
        ) from None
    return rollout


def _record_start(
    session: Session,
    plan: Plan,
    *,
    service: str,
    version: str,
    stable: str,
    slots: Slots,
    created_by: str,
    now: datetime,
    variables: dict[str, str],
    forced: tuple[str, str | None, str | None] | None,
    plan_origin: str | None = None,
) -> Rollout:
    """Insert the rollout (and why it was forced, if it was) and commit."""
    rollout = repository.create_rollout(
        session,
        service=service,
        canary_version=version,
        stable_version=stable,
        plan_name=plan.name,
        plan=plan.model_dump(mode="json"),
        created_by=created_by,
        now=now,
        variables=variables,
        stable_slot=slots.stable,
        canary_slot=slots.canary,
        plan_origin=plan_origin,
    )
    if forced is not None:
        reason, problem, recorded = forced
        repository.append_event(
            session,
            rollout.id,
            "forced_start",
            actor=created_by,
            at=now,
            message=f"started by {created_by} despite the expected state: {reason}"
            + (f" (router: {problem})" if problem else ""),
            data={"reason": reason, "problem": problem, "stable_recorded": recorded},
        )
    session.commit()
    return rollout


@dataclass(frozen=True)
class OperationOutcome:
    rollout_id: str
    accepted: bool
    message: str


def abort_rollout(
    session: Session, rollout_id: str, *, reason: str, actor: str, now: datetime
) -> OperationOutcome:
    """Stop a rollout and put traffic back on stable; final state ``aborted``."""
    return _request_rollback(
        session,
        rollout_id,
        actor=actor,
        now=now,
        why=f"aborted by {actor}: {reason}",
        what="abort",
        final_state=RolloutState.ABORTED,
    )


def rollback_rollout(
    session: Session, rollout_id: str, *, reason: str, actor: str, now: datetime
) -> OperationOutcome:
    """A manual rollback: traffic back to stable, runbook, incident; state ``rolled_back``."""
    if not reason.strip():
        _rollout_or_refuse(session, rollout_id)
        raise OperationError("reason: say why (it goes into the incident)")
    return _request_rollback(
        session,
        rollout_id,
        actor=actor,
        now=now,
        why=f"rollback by {actor}: {reason}",
        what="rollback",
        trigger={"kind": "manual", "reason": reason},
    )


def _rollout_or_refuse(session: Session, rollout_id: str) -> Rollout:
    rollout = repository.get_rollout(session, rollout_id)
    if rollout is None:
        raise OperationError(f"id: no rollout {rollout_id!r}")
    return rollout


def _request_rollback(
    session: Session,
    rollout_id: str,
    *,
    actor: str,
    now: datetime,
    why: str,
    what: str,
    final_state: RolloutState = RolloutState.ROLLED_BACK,
    trigger: dict[str, Any] | None = None,
) -> OperationOutcome:
    """The one flow of abort and rollback: record the request (whoever holds the
    lease), or say why there is nothing to stop. The caller hands it over."""
    rollout = _rollout_or_refuse(session, rollout_id)
    accepted = repository.request_rollback(
        session,
        rollout_id,
        reason=why,
        actor=actor,
        now=now,
        final_state=final_state,
        trigger=trigger,
    )
    if not accepted:
        nothing = "nothing to abort" if what == "abort" else "nothing to roll back"
        return OperationOutcome(
            rollout_id, False, f"rollout {rollout_id} is {rollout.state}; {nothing}"
        )
    return OperationOutcome(rollout_id, True, f"{what} accepted; traffic is going back to stable")


def pause_rollout(
    session: Session, rollout_id: str, *, reason: str, actor: str, now: datetime
) -> OperationOutcome:
    """Stop advancing; traffic stays where it is until resumed or rolled back."""
    return _set_state(
        session,
        rollout_id,
        actor=actor,
        now=now,
        kind="paused",
        allowed=(RolloutState.PENDING, RolloutState.BLOCKED, RolloutState.RUNNING),
        new_state=RolloutState.PAUSED,
        reason=f"paused by {actor}: {reason}",
    )


def resume_rollout(
    session: Session, rollout_id: str, *, actor: str, now: datetime
) -> OperationOutcome:
    """Carry on from where the rollout stands; missing-data counts start again."""
    return _set_state(
        session,
        rollout_id,
        actor=actor,
        now=now,
        kind="resumed",
        allowed=(RolloutState.PAUSED,),
        new_state=RolloutState.RUNNING,
        reason=None,
    )


def _set_state(
    session: Session,
    rollout_id: str,
    *,
    actor: str,
    now: datetime,
    kind: str,
    allowed: tuple[RolloutState, ...],
    new_state: RolloutState,
    reason: str | None,
) -> OperationOutcome:
    def changes(rollout: Rollout) -> dict[str, Any]:
        analysis = dict(rollout.analysis or {})
        # Missing-data counts and breaches start again: a breach must be measured
        # anew after a pause, and the progress deadline counts from the next wait.
        analysis.update(error_streak=0, inconclusive_streak=0, breach_since={})
        analysis.pop("waiting_since", None)
        analysis.pop("deadline_passed", None)
        if new_state == RolloutState.RUNNING and analysis.get("redeploy"):
            # A redeploy that timed out paused the rollout: resuming gives it a new
            # ``redeploy_timeout`` (and its hook new attempts), not an instant re-pause.
            analysis["redeploy"] = {
                **analysis["redeploy"],
                "started_at": now.isoformat(),
                "hook_attempts": 0,
            }
        return {
            "state": new_state,
            "reason": reason,
            "analysis": analysis,
            "next_check_at": now,
            "updated_at": now,
        }

    rollout = _apply_to_fresh(session, rollout_id, allowed, changes)
    if isinstance(rollout, str):
        return OperationOutcome(rollout_id, False, f"{rollout}; cannot be {kind}")
    if kind == "paused" and plan_of(rollout).notifications:
        # Sent by the next reconcile, with the pause in the same transaction.
        outbox.promise_notification(session, rollout_id, "paused", now)
    repository.append_event(
        session,
        rollout_id,
        kind,
        actor=actor,
        at=now,
        message=f"{kind} by {actor}" + (f": {reason}" if reason else ""),
        step_index=rollout.step_index,
    )
    session.commit()
    return OperationOutcome(rollout_id, True, f"rollout {rollout_id} {kind}")


def approve_rollout(
    session: Session,
    rollout_id: str,
    *,
    name: str,
    now: datetime,
    role: str | None = None,
    gate: str | None = None,
    via: str = "api token",
) -> OperationOutcome:
    """Record ``name``'s approval for the gate the rollout waits at (or ``gate``).
    ``via`` says how ``name`` was established (an API token, or the OS user of a
    direct-database CLI), and is kept with the approval.

    The earlier approvals are read under the rollout's row lock, taken first: two
    approvals sent at once (one person in two roles, or the same click twice) are
    checked one after the other, so separation of duties and "one line per person,
    role and gate" hold under concurrency, on PostgreSQL and SQLite alike."""
    rollout = _lock_rollout(session, rollout_id)
    if rollout is None:
        raise OperationError(f"id: no rollout {rollout_id!r}")
    if rollout.state not in (
        RolloutState.PENDING,
        RolloutState.BLOCKED,
        RolloutState.RUNNING,
        RolloutState.PAUSED,
    ):
        return OperationOutcome(rollout_id, False, f"rollout {rollout_id} is {rollout.state}")
    plan = plan_of(rollout)
    gates = {
        "preflight": [g.role for g in plan.gates.approvals],
        **{s.name: list(s.approval) for s in plan.stages},
    }
    if gate is None:
        preflight_done = (rollout.analysis or {}).get("preflight") == "passed"
        gate = "preflight" if not preflight_done else plan.steps()[rollout.step_index].stage
    if gate not in gates:
        raise OperationError(f"stage: no stage {gate!r} in plan {plan.name}")
    roles = [r for r in gates[gate] if name in plan.owners.get(r, [])]
    if role is not None:
        roles = [r for r in roles if r == role]
    if not roles:
        wanted = ", ".join(f"{r} ({', '.join(plan.owners.get(r, []))})" for r in gates[gate])
        raise OperationError(
            f"as: {name!r} cannot approve {gate}: it needs {wanted or 'no approval'}"
        )
    approving_role = _one_role_per_person(session, rollout, name, roles, gate)
    if _approved_already(session, rollout_id, name, approving_role, gate):
        # Asking twice (a retried call, an impatient person) is not a second approval:
        # the audit trail keeps one line per person, role and gate.
        return OperationOutcome(
            rollout_id, True, f"{name} approved {gate} as {approving_role} already"
        )
    repository.append_event(
        session,
        rollout_id,
        "approval",
        actor=name,
        at=now,
        message=f"{name} approved {gate} as {approving_role}",
        data={"gate": gate, "role": approving_role, "name": name, "via": via},
        step_index=rollout.step_index,
    )
    _touch(session, rollout, now)
    session.commit()
    return OperationOutcome(rollout_id, True, f"{name} approved {gate} as {approving_role}")


def _lock_rollout(session: Session, rollout_id: str) -> Rollout | None:
    """Take the rollout's row lock for the rest of the transaction and read it.

    A conditional version bump as the transaction's first statement: PostgreSQL
    holds the row lock until commit (a concurrent writer waits, then sees what was
    committed), and SQLite takes its write lock before anything is read, so no read
    of this transaction predates a concurrent one's commit. An advance holding the
    rollout's object then loses its commit on the version and reads again."""
    session.rollback()
    session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id)
        .values(version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
    session.expire_all()
    return repository.get_rollout(session, rollout_id)


def _approved_already(session: Session, rollout_id: str, name: str, role: str, gate: str) -> bool:
    return any(
        e.data.get("name") == name and e.data.get("role") == role and e.data.get("gate") == gate
        for e in repository.events_for(session, rollout_id, ["approval"])
    )


def _one_role_per_person(
    session: Session, rollout: Rollout, name: str, roles: list[str], gate: str
) -> str:
    """Separation of duties: whoever started a rollout does not approve it, and one
    person approves in one role per rollout, so that two roles always mean two
    people. Returns the role this approval is for."""
    if name == rollout.created_by:
        raise OperationError(
            f"as: {name} started this rollout and cannot also approve it (separation of duties)"
        )
    earlier = {
        e.data.get("role")
        for e in repository.events_for(session, rollout.id)
        if e.kind == "approval" and e.data.get("name") == name
    }
    if earlier:
        held = sorted(earlier)[0]
        if held not in roles:
            raise OperationError(
                f"role: {name} approved this rollout as {held} already; one person "
                f"approves in one role per rollout, so {', '.join(roles)} needs someone else"
            )
        return held
    if len(roles) > 1:
        raise OperationError(
            f"role: {name} is an owner of {', '.join(roles)} for {gate}; approve as one "
            "of them (one person approves in one role per rollout)"
        )
    return roles[0]


def recheck_rollout(
    session: Session, rollout_id: str, *, actor: str, now: datetime
) -> OperationOutcome:
    """Check a blocked rollout's gates again now instead of at the next recheck."""
    rollout = repository.get_rollout(session, rollout_id)
    if rollout is None:
        raise OperationError(f"id: no rollout {rollout_id!r}")
    if rollout.state != RolloutState.BLOCKED:
        return OperationOutcome(
            rollout_id, False, f"rollout {rollout_id} is {rollout.state}, not blocked"
        )
    _touch(session, rollout, now)
    repository.append_event(
        session,
        rollout_id,
        "recheck",
        actor=actor,
        at=now,
        message=f"gates to be checked again, asked by {actor}",
        step_index=rollout.step_index,
    )
    session.commit()
    return OperationOutcome(rollout_id, True, "gates will be checked again within seconds")


def promote_rollout(
    session: Session, rollout_id: str, *, actor: str, reason: str, now: datetime
) -> OperationOutcome:
    """Skip the rest of the current hold. The step still needs its criteria to pass:
    a human may cut waiting short, never the evidence."""
    if not reason.strip():
        raise OperationError("reason: say why the hold is cut short")

    def changes(rollout: Rollout) -> dict[str, Any]:
        promote = {"step": rollout.step_index, "by": actor, "reason": reason}
        return {"analysis": {**(rollout.analysis or {}), "promote": promote}, "next_check_at": now}

    rollout = _apply_to_fresh(session, rollout_id, (RolloutState.RUNNING,), changes)
    if isinstance(rollout, str):
        return OperationOutcome(rollout_id, False, rollout)
    repository.append_event(
        session,
        rollout_id,
        "promote_requested",
        actor=actor,
        at=now,
        message=f"{actor} skipped the rest of the hold: {reason}",
        data={"by": actor, "reason": reason},
        step_index=rollout.step_index,
    )
    session.commit()
    return OperationOutcome(rollout_id, True, "hold skipped; promotes once every criterion passes")


# A person's request wins over an advance in flight: it is applied to a fresh read,
# and if the row changed between the read and the write (an advance took or gave
# back its lease, or committed a step), it is read and applied again. The advance,
# not the person, then loses its commit and re-reads the router.
_CONTENDED_ATTEMPTS = 50
_CONTENDED_PAUSE_SECONDS = 0.1
_STILL_CHANGING = (
    "the rollout kept changing for 5 s (an advance in flight); nothing was changed, ask again"
)


def _apply_to_fresh(
    session: Session,
    rollout_id: str,
    allowed: tuple[RolloutState, ...],
    changes: Callable[[Rollout], dict[str, Any]],
) -> Rollout | str:
    """Write ``changes(rollout)`` with a version check, to a fresh read and again while
    an advance races it; the rollout as it was read, or why nothing was written."""
    for rollout in _fresh_reads(session, rollout_id):
        if rollout.state not in allowed:
            return f"rollout {rollout_id} is {rollout.state}"
        changed = session.execute(
            update(Rollout)
            .where(
                Rollout.id == rollout_id,
                Rollout.version == rollout.version,
                Rollout.state.in_([str(s) for s in allowed]),
            )
            .values(**changes(rollout), version=Rollout.version + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed == 1:
            return rollout
        session.rollback()
    return _STILL_CHANGING


def _fresh_reads(session: Session, rollout_id: str) -> Iterator[Rollout]:
    """The rollout as it is now, once per attempt (bounded, a short pause between)."""
    for attempt in range(_CONTENDED_ATTEMPTS):
        if attempt:
            time.sleep(_CONTENDED_PAUSE_SECONDS)
        session.expire_all()
        rollout = repository.get_rollout(session, rollout_id)
        if rollout is None:
            raise OperationError(f"id: no rollout {rollout_id!r}")
        yield rollout


def record_reconciliation(
    session: Session, service: str, *, note: str, actor: str, now: datetime
) -> OperationOutcome:
    """Record that the data a failed-writes rollback left was reconciled: the audit
    trail on the rollout that required it, and the service's blocked rollouts are
    checked again at once."""
    check_identifier("service", service)
    if not note.strip():
        raise OperationError("note: say what was reconciled and how (it is the audit trail)")
    release = repository.reconciliation_pending(session, service)
    if release is None:
        raise OperationError(
            f"service: {service} has no reconciliation pending (none required, or already recorded)"
        )
    required_by = release.reconcile_required_by
    assert required_by is not None
    release.reconcile_required_by = None
    release.reconcile_required_reason = None
    release.reconcile_required_at = None
    repository.append_event(
        session,
        required_by,
        "reconciliation_done",
        actor=actor,
        at=now,
        message=f"{actor} recorded the data reconciliation of {service}: {note}",
        data={"service": service, "note": note, "by": actor},
    )
    session.execute(
        update(Rollout)
        .where(Rollout.service == service, Rollout.state == RolloutState.BLOCKED)
        .values(next_check_at=now, version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return OperationOutcome(
        required_by, True, f"reconciliation of {service} recorded; its next rollout may go"
    )


# -- ending a failed rollback (design rules 6, 14, 15) ---------------------------------

# A rollback attempt holds the rollout's lease only while it records its outcome
# (milliseconds, every 15 s): a resolve that meets it tries again for this long.
RESOLVE_LEASE_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class TrafficReading:
    """What the controller read back before ending a failed rollback: the router's
    canary weight (None: unreadable, ``error`` says why) and what is wrong with the
    stable slot's version (empty: it answers the stable version, or the plan has no
    version check)."""

    canary_slot: str
    weight: int | None
    error: str | None = None
    version_problems: tuple[str, ...] = ()
    stable_checked: str | None = None  # "stable slot blue serves 1.0" when asked

    @property
    def confirmed(self) -> bool:
        """Traffic on a server answering the stable version, as the router and the
        server themselves say: what a rollback would have had to read."""
        return self.weight == 0 and not self.error and not self.version_problems

    def sentence(self) -> str:
        if self.weight is None:
            return f"cannot read the router: {self.error}"
        if self.weight != 0:
            return f"the router gives {self.weight}% to the canary slot {self.canary_slot}"
        said = "the router reads canary weight 0%"
        if self.version_problems:
            return f"{said}, but " + "; ".join(self.version_problems)
        return f"{said}, {self.stable_checked}" if self.stable_checked else said

    def as_data(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "error": self.error,
            "version_problems": list(self.version_problems),
            "stable_checked": self.stable_checked,
            "confirmed": self.confirmed,
        }


def resolve_rollout(
    session: Session,
    rollout_id: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
    router_for: RouterFactory,
    force: bool = False,
) -> OperationOutcome:
    """End a rollout stuck in ``rollback_failed`` once a person fixed traffic by hand.

    A rollback retries for ever when the router cannot be fixed for the controller (a
    missing backend); abort and rollback are refused and the service can ship nothing.
    The controller reads the router back, as the rollback would have: a canary weight
    of 0 and, with a version check, a stable slot answering the stable version end the
    rollout as the rollback would have (``rolled_back``, or ``aborted`` for an abort),
    with the runbook it promises. Anything else is refused with what was read and
    changes nothing, unless ``force`` (an admin's): the rollout is then ``aborted`` and
    its record says that the controller did NOT confirm traffic on stable. The end is
    written only while the rollout is still ``rollback_failed`` and no rollback attempt
    holds its lease, so a retry never overwrites it, nor it a retry's outcome.
    """
    if not reason.strip():
        raise OperationError("reason: say what was done to traffic and why (the audit trail)")
    rollout = repository.get_rollout(session, rollout_id)
    if rollout is None:
        raise OperationError(f"id: no rollout {rollout_id!r}")
    if rollout.state != RolloutState.ROLLBACK_FAILED:
        return _not_resolvable(rollout)
    reading = read_traffic(rollout, router_for)
    if not reading.confirmed and not force:
        return OperationOutcome(
            rollout_id,
            False,
            f"traffic is not confirmed on stable: {reading.sentence()}. Nothing was "
            "changed: put the canary at 0% (and stable on the stable version), then ask "
            "again; or force (admin) to end it as aborted, recorded as NOT confirmed",
        )
    return _record_resolution(session, rollout, reading, reason=reason, actor=actor, now=now)


def read_traffic(rollout: Rollout, router_for: RouterFactory) -> TrafficReading:
    """Read the router of the rollout's plan, as the rollback does, and when it reads
    0 ask the stable slot which version it serves (``slots.version_mismatches``).
    Never raises: what cannot be read is the answer."""
    plan = plan_of(rollout)
    values = rollout_values(plan, rollout)
    canary = slots_of(plan, rollout).canary
    try:
        weight = router_for(plan, values).get_canary_weight()
    except Exception as exc:  # a broken router setting or an unreachable one: no reading
        return TrafficReading(canary, None, error=str(exc) or type(exc).__name__)
    if weight != 0:
        return TrafficReading(canary, weight)
    if plan.traffic.version_check is None or values.get("stable_url") is None:
        return TrafficReading(canary, 0)
    problems = version_mismatches(plan, values, {"stable": rollout.stable_version})
    checked = f"stable slot {values.get('stable_slot')} serves {rollout.stable_version}"
    return TrafficReading(canary, 0, version_problems=tuple(problems), stable_checked=checked)


def _not_resolvable(rollout: Rollout) -> OperationOutcome:
    """The refusal for a rollout that is not stuck: name its state and the way out."""
    if rollout.state == RolloutState.ROLLING_BACK:
        hint = "its rollback is still running"
    elif rollout.state in FINAL_STATES:
        hint = "it has ended"
    else:
        hint = "use abort or rollback"
    return OperationOutcome(
        rollout.id,
        False,
        f"rollout {rollout.id} is {rollout.state}, not rollback_failed: resolve ends only "
        f"a rollback that cannot confirm traffic on stable ({hint})",
    )


def _record_resolution(
    session: Session,
    rollout: Rollout,
    reading: TrafficReading,
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> OperationOutcome:
    """Write the end, its ``resolved`` event and what it promises, in one commit."""
    asked = f"{rollout.reason}; " if rollout.reason else ""
    if reading.confirmed:
        final = str((rollout.analysis or {}).get("final_state", RolloutState.ROLLED_BACK))
        weight: int | None = 0
        why = f"{asked}resolved by {actor}: {reason}"
    else:
        final, weight = str(RolloutState.ABORTED), reading.weight
        why = f"{asked}ended by {actor} with traffic NOT confirmed on stable: {reason}"
    ending = {"state": final, "weight": weight, "reason": why, "finished_at": now}
    if not _write_unless_held(session, rollout.id, {**ending, "updated_at": now}, now):
        return _not_written(session, rollout.id)
    repository.append_event(
        session,
        rollout.id,
        "resolved",
        actor=actor,
        at=now,
        message=_resolved_event_message(reading, actor, reason, final),
        data={
            "by": actor,
            "reason": reason,
            "forced": not reading.confirmed,
            "traffic_confirmed": reading.confirmed,
            "final_state": final,
            "router": reading.as_data(),
        },
        step_index=rollout.step_index,
    )
    require_reconciliation_after_failed_writes(session, rollout, now, actor)
    _promise_aftercare(session, rollout, reading, now)
    session.commit()
    if reading.confirmed:
        return OperationOutcome(
            rollout.id, True, f"rollout {rollout.id} {final}: {reading.sentence()}"
        )
    return OperationOutcome(
        rollout.id,
        True,
        f"rollout {rollout.id} {final}, recorded with traffic NOT confirmed on stable "
        f"({reading.sentence()})",
    )


def _write_unless_held(
    session: Session, rollout_id: str, values: dict[str, Any], now: datetime
) -> bool:
    """Apply ``values`` (uncommitted) while the rollout is still ``rollback_failed``
    and no rollback attempt holds its lease; False if it never was within
    ``RESOLVE_LEASE_WAIT_SECONDS`` or the rollout left ``rollback_failed``."""
    deadline = time.monotonic() + RESOLVE_LEASE_WAIT_SECONDS
    while True:
        lease_now = repository.database_clock(session, now)
        changed = session.execute(
            update(Rollout)
            .where(
                Rollout.id == rollout_id,
                Rollout.state == RolloutState.ROLLBACK_FAILED,
                or_(Rollout.lease_owner.is_(None), Rollout.lease_expires_at < lease_now),
            )
            .values(**values, version=Rollout.version + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed == 1:
            session.expire_all()  # the rollout as written, for what follows
            return True
        session.rollback()
        current = repository.get_rollout(session, rollout_id)
        if current is None or current.state != RolloutState.ROLLBACK_FAILED:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _not_written(session: Session, rollout_id: str) -> OperationOutcome:
    """Why the end was not written: the rollout changed (a retry settled it), or a
    rollback attempt held its lease the whole time."""
    session.expire_all()
    current = repository.get_rollout(session, rollout_id)
    if current is None:
        raise OperationError(f"id: no rollout {rollout_id!r}")
    if current.state != RolloutState.ROLLBACK_FAILED:
        return _not_resolvable(current)
    return OperationOutcome(
        rollout_id,
        False,
        f"{current.lease_owner} holds rollout {rollout_id} right now (a rollback attempt "
        "recording its outcome); nothing was changed, ask again in a few seconds",
    )


def _resolved_event_message(reading: TrafficReading, actor: str, reason: str, final: str) -> str:
    if reading.confirmed:
        return f"resolved by {actor}: {reading.sentence()}; rollout {final}: {reason}"
    return (
        f"ended by {actor} (forced) with traffic NOT confirmed on stable by the controller: "
        f"{reading.sentence()}; rollout {final}: {reason}"
    )


def _promise_aftercare(
    session: Session, rollout: Rollout, reading: TrafficReading, now: datetime
) -> None:
    """What a rollback promises when it settles (``rollback._Aftercare``): with traffic
    confirmed the runbook's steps 2-5 and the ``rolled_back`` notification; without,
    only if the failed attempt never promised them (the critical incident), so that
    an incident is opened once. The rows are sent by reconcile's outbox dispatch."""
    promised_before = session.scalars(
        select(Outbox.id).where(Outbox.rollout_id == rollout.id, Outbox.kind == "runbook").limit(1)
    ).first()
    if not reading.confirmed and promised_before is not None:
        return
    shift = {
        "shift_started": now.isoformat(),
        "shifted_at": now.isoformat(),
        "shift_detail": f"resolved by hand: {reading.sentence()}"
        if reading.confirmed
        else f"not confirmed: {reading.sentence()}",
        "traffic_on_stable": reading.confirmed,
    }
    outbox.promise_runbook(session, rollout, shift, now)
    if plan_of(rollout).notifications:
        kind = "rolled_back" if reading.confirmed else "rollback_failed"
        outbox.promise_notification(session, rollout.id, kind, now)


def _touch(session: Session, rollout: Rollout, now: datetime) -> None:
    """Make a waiting rollout due now (a version bump, so a stale writer notices)."""
    session.execute(
        update(Rollout)
        .where(Rollout.id == rollout.id)
        .values(next_check_at=now, version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
