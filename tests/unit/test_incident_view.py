"""`canary incident show` tells what started the rollback in words, not as the
Python dict the store keeps."""

from __future__ import annotations

from rich.console import Console

from controller.render import incident_view, trigger_text


def test_an_alert_trigger_reads_as_a_sentence() -> None:
    trigger = {
        "at": "2026-01-01T10:00:00+00:00",
        "actor": "alertmanager",
        "reason": "alert CanaryHigh5xxRate fired",
        "kind": "alert",
        "alertname": "CanaryHigh5xxRate",
        "labels": {"service": "checkout", "version": "1.4.0"},
        "fingerprint": "ab12",
        "starts_at": None,
        "stable_after_seconds": 1.234,
    }
    assert trigger_text(trigger) == (
        "alert CanaryHigh5xxRate fired; at: 2026-01-01T10:00:00+00:00; actor: alertmanager; "
        "reason: alert CanaryHigh5xxRate fired; labels: service=checkout, version=1.4.0; "
        "fingerprint: ab12; stable after seconds: 1.234"
    )


def test_each_kind_leads_with_what_happened() -> None:
    assert trigger_text({"kind": "criterion", "criterion": "http_5xx", "value": 0.1234567}) == (
        "criterion http_5xx tripped; value: 0.1235"
    )
    assert trigger_text({"kind": "manual", "actor": "olga", "reason": "p99 doubled"}) == (
        "by hand; actor: olga; reason: p99 doubled"
    )
    assert trigger_text({"kind": "policy", "policy": "on_drift", "expected": 10}) == (
        "plan policy on_drift; expected: 10"
    )
    assert trigger_text({"reason": "?"}) == "unknown; reason: ?"


def test_the_incident_view_prints_no_dict() -> None:
    document = {
        "id": "i-1",
        "severity": "major",
        "title": "checkout 1.4.0 rolled back",
        "rollout_id": "r-1",
        "started_by": "release-bot",
        "opened_at": "2026-01-01T10:00:01+00:00",
        "webhook_status": "posted",
        "trigger": {"kind": "alert", "alertname": "CanaryHigh5xxRate", "labels": {"a": "b"}},
        "metrics_snapshot": [],
        "timeline": [],
    }
    console = Console(width=200, record=True)
    console.print(incident_view(document))
    text = console.export_text()
    assert "trigger: alert CanaryHigh5xxRate fired; labels: a=b" in text
    assert "{'" not in text and "'kind'" not in text
