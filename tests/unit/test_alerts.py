"""Which Alertmanager alert rolls back which rollout."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from config import PLANS_DIR
from controller.alerts import Alert, AlertmanagerPayload, match_alert
from controller.plan_loader import load_plan
from controller.store.models import Rollout

PLAN = load_plan(PLANS_DIR / "demo.yaml").model_dump(mode="json")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rollout(state: str = "running", service: str = "checkout", rid: str = "r-1") -> Rollout:
    return Rollout(
        id=rid, service=service, canary_version="2.0", stable_version="1.0", plan=PLAN, state=state
    )


def alert(status: str = "firing", **labels: str) -> Alert:
    base = {"alertname": "Canary5xx", "severity": "critical", "service": "checkout"}
    return Alert(status=status, labels={**base, **labels}, fingerprint="abc")


def decide(a: Alert, *rollouts: Rollout) -> list[tuple[str | None, str, str]]:
    return [(m.rollout_id, m.action, m.reason) for m in match_alert(a, list(rollouts))]


def test_firing_critical_alert_for_the_service_rolls_back() -> None:
    assert decide(alert(), rollout()) == [("r-1", "rollback", "alert Canary5xx fired")]


def test_paused_rollouts_are_rolled_back_too() -> None:
    assert decide(alert(), rollout("paused"))[0][1] == "rollback"


def test_resolved_alerts_change_nothing() -> None:
    assert decide(alert("resolved"), rollout()) == [
        (None, "ignored", "resolved alert: nothing to do")
    ]


def test_another_service_is_not_touched() -> None:
    assert decide(alert(service="payments"), rollout()) == [
        (None, "ignored", "no active rollout of payments")
    ]


def test_matchers_must_hold() -> None:
    ((_, action, reason),) = decide(alert(severity="warning"), rollout())
    assert action == "ignored" and 'severity="critical"' in reason


def test_an_alert_about_the_stable_version_does_not_roll_back_the_canary() -> None:
    ((_, action, reason),) = decide(alert(version="1.0"), rollout())
    assert action == "ignored" and "version 1.0" in reason


def test_rollout_id_label_narrows_to_one_rollout() -> None:
    assert decide(alert(rollout_id="r-2"), rollout(rid="r-1")) == [
        (None, "ignored", "no active rollout of checkout")
    ]


def test_a_repeat_while_rolling_back_is_already_handled() -> None:
    assert decide(alert(), rollout("rolling_back")) == [("r-1", "ignored", "already rolling_back")]


def test_payload_must_be_version_4_with_alerts() -> None:
    with pytest.raises(ValidationError, match="version"):
        AlertmanagerPayload.model_validate({"version": "3", "status": "firing", "alerts": []})
    with pytest.raises(ValidationError, match="alerts"):
        AlertmanagerPayload.model_validate({"version": "4", "status": "firing"})
    with pytest.raises(ValidationError, match="status"):
        AlertmanagerPayload.model_validate(
            {"version": "4", "status": "firing", "alerts": [{"status": "odd", "labels": {}}]}
        )


def test_a_repeat_after_the_rollback_ended_is_recognised_by_fingerprint() -> None:
    ended = rollout("rolled_back")
    ended.analysis = {"trigger": {"kind": "alert", "fingerprint": "abc"}}
    assert decide_recent(alert(), ended) == [("r-1", "ignored", "already handled: rolled_back")]
    other = alert()
    other.fingerprint = "zzz"
    assert decide_recent(other, ended)[0][2] == "no active rollout of checkout"


def decide_recent(a: Alert, *recent: Rollout) -> list[tuple[str | None, str, str]]:
    return [(m.rollout_id, m.action, m.reason) for m in match_alert(a, [], list(recent))]
