"""What people do to rollouts (start, abort), with the checks that keep bad input out.

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

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller import outbox
from controller.plan import Plan
from controller.runtime import RouterFactory
from controller.slots import (
    Slots,
    router_names_problem,
    router_state_problem,
    slots_for_new_rollout,
    template_values,
)
from controller.store import repository
from controller.store.models import ACTIVE_STATES, Rollout, RolloutState
from controller.stored_plans import plan_of
from controller.traffic.base import RouterError
from controller.url_policy import HostPolicy, url_problems

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
    active = session.scalars(
        select(Rollout.id).where(
            Rollout.service == service, Rollout.state.in_([str(s) for s in ACTIVE_STATES])
        )
    ).first()
    if active:
        raise OperationConflict(
            f"service: {service} already has an active rollout ({active}); "
            "abort it or wait for it to finish"
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
    rollout = repository.get_rollout(session, rollout_id)
    if rollout is None:
        raise OperationError(f"id: no rollout {rollout_id!r}")
    accepted = repository.request_rollback(
        session,
        rollout_id,
        reason=f"aborted by {actor}: {reason}",
        actor=actor,
        now=now,
        final_state=RolloutState.ABORTED,
    )
    message = (
        "abort accepted; traffic is going back to stable"
        if accepted
        else f"rollout {rollout_id} is {rollout.state}; nothing to abort"
    )
    return OperationOutcome(rollout_id, accepted, message)


def rollback_rollout(
    session: Session, rollout_id: str, *, reason: str, actor: str, now: datetime
) -> OperationOutcome:
    """A manual rollback: traffic back to stable, runbook, incident; state ``rolled_back``."""
    rollout = repository.get_rollout(session, rollout_id)
    if rollout is None:
        raise OperationError(f"id: no rollout {rollout_id!r}")
    if not reason.strip():
        raise OperationError("reason: say why (it goes into the incident)")
    accepted = repository.request_rollback(
        session,
        rollout_id,
        reason=f"rollback by {actor}: {reason}",
        actor=actor,
        now=now,
        trigger={"kind": "manual", "reason": reason},
    )
    if not accepted:
        return OperationOutcome(
            rollout_id, False, f"rollout {rollout_id} is {rollout.state}; nothing to roll back"
        )
    return OperationOutcome(rollout_id, True, "rollback accepted; traffic is going back to stable")


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


def _touch(session: Session, rollout: Rollout, now: datetime) -> None:
    """Make a waiting rollout due now (a version bump, so a stale writer notices)."""
    session.execute(
        update(Rollout)
        .where(Rollout.id == rollout.id)
        .values(next_check_at=now, version=Rollout.version + 1)
        .execution_options(synchronize_session=False)
    )
