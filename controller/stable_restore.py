"""Redeploy mode: a rollback that comes after the redeploy hook started puts the stable
version back into the stable slot before any traffic moves there.

In ``redeploy`` mode a rollout ends by deploying the new version into the stable slot
and moving traffic back to it. From the moment that hook may have run, the stable
slot can no longer be trusted to serve the stable version: it may serve the new one,
or be restarting. Moving the canary's traffic to it then would end a "rollback" on
the version being rolled back, or on 503s. So the rollback first runs the same hook
with ``deploy_version`` set to the stable version, waits until the slot answers that
version at its own address (``/version``) and the router has held it up for
``redeploy_settle``, and only then shifts traffic. Meanwhile traffic stays on the
canary slot, which the router holds up; past ``redeploy_timeout`` the rollback is
``rollback_failed``, loudly, and keeps trying.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.durations import format_duration
from controller.hooks import run_hook
from controller.plan import Plan, SlotMode, hook_variables
from controller.slots import rollout_values, version_mismatches
from controller.traffic.base import Serving, TrafficRouter, serving_or_problem

RESTORE_KEY = "stable_restore"  # in the rollout's analysis: the restore's progress
RECHECK = timedelta(seconds=2)  # how soon a waiting restore looks again


def redeploy_began(plan: Plan, analysis: dict[str, Any] | None) -> bool:
    """Whether the redeploy hook may have touched the stable slot (its intent is
    recorded before it runs)."""
    return plan.traffic.mode == SlotMode.REDEPLOY and bool((analysis or {}).get("redeploy"))


def needs_stable_restored(plan: Plan, rollout: Any) -> bool:
    """A rollback of this rollout must deploy the stable version back first."""
    analysis = rollout.analysis or {}
    restored = (analysis.get(RESTORE_KEY) or {}).get("ready")
    return redeploy_began(plan, analysis) and not restored


def settle_wait(
    serving: Serving, state: dict[str, Any], now: datetime, settle: timedelta, version: str
) -> list[str]:
    """What is still awaited before traffic may move onto a slot that serves
    ``version``: the router must hold it up, and have for ``settle`` without a change
    (HAProxy notices a restart only after its failed checks, so right after a fast
    restart it may still hold the slot up from before). ``state`` keeps since when
    the slot has looked ready; empty once settled."""
    if serving.problem:
        state.pop("ready_since", None)
        return [serving.problem]
    ready_since = datetime.fromisoformat(state.get("ready_since") or now.isoformat())
    if serving.unchanged_for is not None:
        # A change the router saw between two checks (down, then up) starts it over.
        ready_since = max(ready_since, now - timedelta(seconds=serving.unchanged_for))
    state["ready_since"] = ready_since.isoformat()
    held = now - ready_since
    if held < settle:
        return [
            f"the stable slot serves {version} and the router holds it up; settling, "
            f"{format_duration(held)} of {format_duration(settle)}"
        ]
    return []


@dataclass(frozen=True)
class Restore:
    """Where putting the stable version back stands."""

    ready: bool
    waiting: str = ""  # what is awaited (empty once ready)
    failed: str | None = None  # past the timeout, or the hook cannot deploy stable
    events: tuple[tuple[str, str, dict[str, Any]], ...] = ()  # (kind, message, data)


def restore_stable(
    plan: Plan, rollout: Any, router: TrafficRouter, now: datetime
) -> tuple[Restore, dict[str, Any]]:
    """One look at the restore: run the hook with the stable version (again after a
    failure), then ask the slot's version and the router. Returns the outcome and
    the rollout's analysis with the restore's progress, for the caller to store."""
    analysis = dict(rollout.analysis or {})
    state = dict(analysis.get(RESTORE_KEY) or {"started_at": now.isoformat()})
    started = datetime.fromisoformat(state["started_at"])
    traffic = plan.traffic
    values = {**rollout_values(plan, rollout), "deploy_version": rollout.stable_version}
    slot = values.get("stable_slot", "")
    events: list[tuple[str, str, dict[str, Any]]] = []
    assert traffic.redeploy is not None
    if "deploy_version" not in hook_variables(traffic.redeploy):
        analysis[RESTORE_KEY] = state
        why = (
            f"the redeploy hook names no {{{{ deploy_version }}}} (a plan stored before it "
            f"existed), so it cannot deploy {rollout.stable_version} back into the stable "
            f"slot {slot}: deploy it by hand, then `canary resolve {rollout.id} --reason ...`"
        )
        return Restore(False, why, failed=why), analysis
    if not state.get("hook_ok"):
        ok, detail = run_hook(traffic.redeploy, values)
        state["hook_attempts"] = state.get("hook_attempts", 0) + 1
        state["hook_ok"] = ok
        events.append(
            (
                "redeploy",
                f"rollback: deploy stable {rollout.stable_version} back into the stable slot "
                f"{slot} before traffic moves there: "
                + ("started" if ok else "FAILED")
                + f" ({detail})",
                {"ok": ok, "detail": detail, "slot": slot, "rollback": True},
            )
        )
    if state.get("hook_ok"):
        wrong = version_mismatches(plan, values, {"stable": rollout.stable_version})
        if wrong:
            state.pop("ready_since", None)
        else:
            wrong = settle_wait(
                serving_or_problem(router, "stable"),
                state,
                now,
                traffic.redeploy_settle,
                rollout.stable_version,
            )
    else:
        wrong = ["the redeploy hook has not deployed the stable version yet"]
    analysis[RESTORE_KEY] = state
    if not wrong:
        state["ready"] = True
        return Restore(True, events=tuple(events)), analysis
    waiting = "; ".join(wrong)
    failed = None
    if now - started >= traffic.redeploy_timeout:
        failed = (
            f"the stable slot {slot} does not serve {rollout.stable_version} "
            f"{format_duration(traffic.redeploy_timeout)} after the rollback began deploying "
            f"it back ({waiting}); traffic stays on the canary slot until it does"
        )
    return Restore(False, waiting, failed=failed, events=tuple(events)), analysis
