"""Alertmanager webhooks: which firing alert rolls back which rollout.

Matching is pure logic over the payload and the active rollouts, so every case
(resolved, another service, the stable version, a repeat) is a unit test; the API
only validates, authenticates and enqueues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from controller.input_text import refuse_nul
from controller.plan import Plan
from controller.plan_checks import MatcherError, parse_matcher
from controller.store.models import ADVANCING_STATES, Rollout, RolloutState
from controller.stored_plans import plan_of

MAX_ALERTS = 1000


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    # Alertmanager always sends a zone; a naive time could not be compared with ours.
    startsAt: AwareDatetime | None = None  # noqa: N815 - Alertmanager's field names
    endsAt: AwareDatetime | None = None  # noqa: N815
    fingerprint: str = ""

    # Labels end up in the rollout's events and incident: text the store can hold.
    _storable = field_validator("labels", "annotations", "fingerprint")(refuse_nul)


class AlertmanagerPayload(BaseModel):
    """Alertmanager's webhook body, version 4."""

    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""  # noqa: N815
    alerts: list[Alert] = Field(max_length=MAX_ALERTS)


@dataclass(frozen=True)
class AlertMatch:
    """One alert and what it means for one rollout (or for none)."""

    alertname: str
    fingerprint: str
    rollout_id: str | None
    action: Literal["rollback", "ignored"]
    reason: str
    labels: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "alertname": self.alertname,
            "fingerprint": self.fingerprint,
            "rollout_id": self.rollout_id,
            "action": self.action,
            "reason": self.reason,
        }


def matchers_hold(plan: Plan, labels: dict[str, str]) -> tuple[bool, str]:
    """Whether an alert's labels satisfy the plan's alert matchers, and if not, which not.

    Matchers are parsed by the same code that validated them at plan load
    (``controller.plan_checks``), so what validates is what matches."""
    for text in plan.alerts.matchers:
        try:
            matcher = parse_matcher(text, stored=True)  # a running rollout's plan
        except MatcherError as exc:  # only a plan stored before matchers were checked
            return False, f"matcher {text!r} is not valid: {exc}"
        if not matcher.matches(labels):
            actual = labels.get(matcher.name, "")
            return False, f'matcher {matcher.text} does not hold ({matcher.name}="{actual}")'
    return True, ""


def match_alert(
    alert: Alert, rollouts: list[Rollout], recent: list[Rollout] | None = None
) -> list[AlertMatch]:
    """Decide, for one alert, which of the service's active rollouts it rolls back.

    ``recent`` are rollouts that ended lately: a repeat of the alert that rolled one
    of them back is reported as already handled rather than as unknown."""
    name = alert.labels.get("alertname", "")

    def outcome(rollout_id: str | None, action: str, reason: str) -> AlertMatch:
        return AlertMatch(
            name,
            alert.fingerprint,
            rollout_id,
            action,
            reason,  # type: ignore[arg-type]
            alert.labels,
        )

    if alert.status == "resolved":
        return [outcome(None, "ignored", "resolved alert: nothing to do")]
    found: list[AlertMatch] = []
    for rollout in rollouts:
        plan = plan_of(rollout)
        if alert.labels.get(plan.alerts.service_label) != rollout.service:
            continue
        if "rollout_id" in alert.labels and alert.labels["rollout_id"] != rollout.id:
            continue
        version = alert.labels.get("version")
        if version is not None and version != rollout.canary_version:
            found.append(
                outcome(
                    rollout.id,
                    "ignored",
                    f"alert is about version {version}, the canary is {rollout.canary_version}",
                )
            )
            continue
        ok, why = matchers_hold(plan, alert.labels)
        if (
            alert.startsAt is not None
            and rollout.created_at is not None
            and (alert.startsAt < rollout.created_at)
        ):
            found.append(
                outcome(
                    rollout.id,
                    "ignored",
                    "alert started before this rollout (a repeat of an older one)",
                )
            )
        elif not ok:
            found.append(outcome(rollout.id, "ignored", why))
        elif rollout.state not in (*ADVANCING_STATES, RolloutState.PAUSED):
            found.append(outcome(rollout.id, "ignored", f"already {rollout.state}"))
        else:
            found.append(outcome(rollout.id, "rollback", f"alert {name} fired"))
    if not found:
        for ended in recent or []:
            trigger = (ended.analysis or {}).get("trigger") or {}
            if alert.fingerprint and trigger.get("fingerprint") == alert.fingerprint:
                return [outcome(ended.id, "ignored", f"already handled: {ended.state}")]
        service = alert.labels.get("service", "(no service label)")
        return [outcome(None, "ignored", f"no active rollout of {service}")]
    return found
