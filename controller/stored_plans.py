"""A rollout's stored plan, validated once per process and per distinct plan.

Everything that acts on a running rollout (a check, a rollback, an alert, the
runbook, a notification, a status view) needs its plan as a ``Plan``. Validating it
was a measurable part of a check's CPU, and a rollback loaded it three times, so
every such reader takes it from here: validated once (``Plan.from_stored``: what
was accepted when the rollout started still loads after an upgrade), and shared by
every rollout started from the same plan, so a worker's memory does not grow with
the rollouts it checks. A rollout's plan is fixed when it starts: nothing changes it
afterwards (nor the shared copy).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any, Protocol

from controller.plan import Plan


class HasPlan(Protocol):
    """A rollout as the store keeps it: its id and its plan's data."""

    id: str
    plan: dict[str, Any]


_plans: OrderedDict[str, Plan] = OrderedDict()  # content digest -> validated plan
_plan_digests: OrderedDict[str, str] = OrderedDict()  # rollout id -> its plan's digest
_PLANS_KEPT = 256
_DIGESTS_KEPT = 65536
_plans_guard = threading.Lock()


def plan_of(rollout: HasPlan) -> Plan:
    """The rollout's plan, validated at most once per process (see the module)."""
    with _plans_guard:
        digest = _plan_digests.get(rollout.id)
        if digest is not None:
            _plan_digests.move_to_end(rollout.id)
    if digest is None:
        canonical = json.dumps(rollout.plan, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
    with _plans_guard:
        _remember(_plan_digests, rollout.id, digest, _DIGESTS_KEPT)
        plan = _plans.get(digest)
        if plan is not None:
            _plans.move_to_end(digest)
            return plan
    plan = Plan.from_stored(rollout.plan)
    with _plans_guard:
        _remember(_plans, digest, plan, _PLANS_KEPT)
    return plan


def _remember(kept: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > limit:
        kept.popitem(last=False)
