"""Plans registered by name: what operators start rollouts from.

An inline plan decides the whole release process (approvals, holds, criteria,
where the runbook sends requests), so only an admin may bring one; everyone else
names a plan an admin registered. Registering keeps every version with who
registered it and when; registering the same text again registers nothing. A plan
is found in the store first, then as ``NAME.yaml`` in the plans directory (files
an admin deployed with the controller).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.operations import OperationError
from controller.plan import Plan
from controller.plan_loader import parse_plan, read_plan_text
from controller.redaction import redact
from controller.store.models import RegisteredPlan

PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

# Validated plans by the digest of their text. Validating parses every PromQL query
# and matcher, which is most of the cost of a start: a registered version's text
# never changes, so it is validated once per process, not at every start.
_validated: OrderedDict[str, Plan] = OrderedDict()
_VALIDATED_KEPT = 128
_validated_guard = threading.Lock()


@dataclass(frozen=True)
class FoundPlan:
    """A plan to start from, and where it came from (recorded with the rollout)."""

    plan: Plan
    origin: str  # "registered plan demo v3" or "plans directory: demo.yaml"


def check_name(name: str) -> None:
    if not PLAN_NAME.fullmatch(name):
        raise OperationError(
            f"plan: {name!r} is not a plan name (lowercase letters, digits, _ . -; at most 64)"
        )


def register_plan(
    session: Session, name: str, source: str, *, registered_by: str, now: datetime, note: str = ""
) -> tuple[RegisteredPlan, bool]:
    """Validate ``source`` and store it as the next version of ``name``; returns the
    version and whether it is new (the same text as the latest is not stored
    again). Raises PlanError for a plan that would not load."""
    check_name(name)
    validated_plan(source, label=f"plan {name}")
    digest = text_digest(source)
    latest = _latest(session, name)
    if latest is not None and latest.digest == digest:
        return latest, False
    row = RegisteredPlan(
        name=name,
        version=(latest.version if latest else 0) + 1,
        source=source,
        digest=digest,
        registered_by=registered_by,
        registered_at=now,
        note=note,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # another registration of this name won the version
        session.rollback()
        raise OperationError(
            f"plan: {name} was registered by someone else at the same moment; "
            "look at the latest version and register again"
        ) from None
    return row, True


def find_plan(
    session: Session, name: str, plans_dir: Path, version: int | None = None
) -> FoundPlan:
    """The plan named ``name`` (its latest version, or ``version``): registered, or
    else a file of the plans directory."""
    check_name(name)
    row = (
        registered_version(session, name, version)
        if version is not None
        else _latest(session, name)
    )
    if row is not None:
        return FoundPlan(
            validated_plan(row.source, label=f"plan {name} v{row.version}"),
            f"registered plan {name} v{row.version}",
        )
    path = plans_dir / f"{name}.yaml"
    if version is None and path.is_file():
        return FoundPlan(
            validated_plan(read_plan_text(path), label=str(path)), f"plans directory: {path.name}"
        )
    raise OperationError(f"plan: no plan named {name!r}")


def text_digest(source: str) -> str:
    """The digest a registered plan's text is stored and found by."""
    return hashlib.sha256(source.encode()).hexdigest()


def validated_plan(source: str, *, label: str) -> Plan:
    """``parse_plan(source)``, done once per distinct text in this process (the
    latest ``_VALIDATED_KEPT`` texts are kept). A text that does not validate raises
    PlanError every time, naming ``label``; nothing is kept of it. The plan is shared
    by every caller, like ``controller.stored_plans``: nothing changes a Plan."""
    digest = text_digest(source)
    with _validated_guard:
        plan = _validated.get(digest)
        if plan is not None:
            _validated.move_to_end(digest)
            return plan
    plan = parse_plan(source, source=label)
    with _validated_guard:
        _validated[digest] = plan
        _validated.move_to_end(digest)
        while len(_validated) > _VALIDATED_KEPT:
            _validated.popitem(last=False)
    return plan


def registered_version(session: Session, name: str, version: int | None = None) -> RegisteredPlan:
    """A registered plan's row (latest, or ``version``); OperationError if none."""
    check_name(name)
    query = select(RegisteredPlan).where(RegisteredPlan.name == name)
    row = (
        session.scalars(query.where(RegisteredPlan.version == version)).first()
        if version is not None
        else _latest(session, name)
    )
    if row is None:
        which = f"version {version} of " if version is not None else ""
        raise OperationError(f"plan: no {which}registered plan {name!r}")
    return row


def list_plans(session: Session) -> list[dict[str, Any]]:
    """The latest version of every registered plan."""
    newest = (
        select(RegisteredPlan.name, func.max(RegisteredPlan.version).label("version"))
        .group_by(RegisteredPlan.name)
        .subquery()
    )
    rows = session.scalars(
        select(RegisteredPlan)
        .join(
            newest,
            (RegisteredPlan.name == newest.c.name) & (RegisteredPlan.version == newest.c.version),
        )
        .order_by(RegisteredPlan.name)
    )
    return [plan_view(row) for row in rows]


def plan_view(row: RegisteredPlan) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "digest": row.digest,
        "registered_by": row.registered_by,
        "registered_at": row.registered_at.isoformat(),
        "note": row.note,
    }


def plan_source_view(row: RegisteredPlan) -> dict[str, Any]:
    """A registered plan with its text as the API shows it, to every role: masked
    (``controller.redaction``), with ``masked`` saying whether that changed it.

    A viewer may read plans, and a plan may still hold a secret (a token in a hook's
    URL, a key in a command). Nobody needs it through the API: workers read the stored
    plan, the admin who registered it holds its source, and an answer is copied into
    terminals, proxies and logs. The digest stays the stored text's, so a reader can
    tell whether the text they hold is the one registered."""
    shown = redact(row.source)
    return {**plan_view(row), "plan_yaml": shown, "masked": shown != row.source}


def _latest(session: Session, name: str) -> RegisteredPlan | None:
    return session.scalars(
        select(RegisteredPlan)
        .where(RegisteredPlan.name == name)
        .order_by(RegisteredPlan.version.desc())
        .limit(1)
    ).first()
