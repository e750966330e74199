"""Notification targets refuse bad configuration up front, events read well, and no
outcome or log line ever carries a (possibly secret) hook URL."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from controller import notifications
from controller.notifications import (
    LIFECYCLE_KINDS,
    LifecycleEvent,
    NotificationTarget,
    notify,
)

SECRET_URL = "https://hooks.example.test/services/T000/B000/s3cr3t-token"
AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def event(kind: str = "rolled_back", **changes: object) -> LifecycleEvent:
    fields: dict[str, object] = {
        "kind": kind,
        "rollout_id": "ro-42",
        "service": "checkout",
        "version": "1.4.0",
        "stable": "1.3.2",
        "state": "rolled_back",
        "stage": "canary 10%",
        "weight": 0,
        "reason": "stop criterion http_5xx_ratio tripped (0.031 > 0.01)",
        "at": AT,
    }
    fields.update(changes)
    return LifecycleEvent(**fields)  # type: ignore[arg-type]


def errors_of(**fields: object) -> str:
    with pytest.raises(ValidationError) as info:
        NotificationTarget(**fields)  # type: ignore[arg-type]
    return str(info.value)


# --- validation -------------------------------------------------------------------


def test_webhook_without_url_names_both_fields() -> None:
    message = errors_of(name="ops", kind="webhook")
    assert "needs url or url_env" in message


def test_slack_with_url_and_url_env_is_refused() -> None:
    message = errors_of(name="ops", kind="slack", url=SECRET_URL, url_env="SLACK_HOOK")
    assert "url or url_env, not both" in message


def test_webhook_with_command_is_refused() -> None:
    message = errors_of(name="ops", kind="webhook", url=SECRET_URL, command=["true"])
    assert "command is only for kind 'command'" in message


def test_command_with_url_is_refused() -> None:
    message = errors_of(name="ops", kind="command", command=["true"], url=SECRET_URL)
    assert "url and url_env are not used by kind 'command'" in message
    message = errors_of(name="ops", kind="command", command=["true"], url_env="HOOK")
    assert "url and url_env are not used" in message


def test_command_without_argv_is_refused() -> None:
    assert "needs command" in errors_of(name="ops", kind="command")
    assert "command" in errors_of(name="ops", kind="command", command=[])
    assert "command[0]" in errors_of(name="ops", kind="command", command=[" "])


@pytest.mark.parametrize(
    "url",
    ["ftp://example.test/hook", "file:///etc/passwd", "example.test/hook", "https://", "http:/x"],
)
def test_only_http_and_https_urls(url: str) -> None:
    message = errors_of(name="ops", kind="webhook", url=url)
    assert "url" in message and "http:// or https://" in message


def test_unknown_event_kind_is_refused() -> None:
    message = errors_of(name="ops", kind="webhook", url=SECRET_URL, events=["exploded"])
    assert "events.0" in message


def test_empty_events_are_refused() -> None:
    assert "events" in errors_of(name="ops", kind="webhook", url=SECRET_URL, events=[])


@pytest.mark.parametrize("name", ["", "Ops", "-ops", "ops team", "o" * 65])
def test_bad_names_are_refused(name: str) -> None:
    assert "name" in errors_of(name=name, kind="webhook", url=SECRET_URL)


def test_bad_env_variable_name_is_refused() -> None:
    assert "url_env" in errors_of(name="ops", kind="slack", url_env="https://x")


@pytest.mark.parametrize("timeout", [0, -1, 31])
def test_timeout_is_bounded(timeout: float) -> None:
    message = errors_of(name="ops", kind="webhook", url=SECRET_URL, timeout_seconds=timeout)
    assert "timeout_seconds" in message


def test_extra_fields_are_refused() -> None:
    assert "headers" in errors_of(name="ops", kind="webhook", url=SECRET_URL, headers={})


def test_defaults_subscribe_to_every_kind() -> None:
    target = NotificationTarget(name="ops", kind="slack", url_env="SLACK_HOOK")
    assert tuple(target.events) == LIFECYCLE_KINDS
    assert target.timeout_seconds == 3.0


def test_event_with_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown lifecycle kind"):
        event("exploded")


# --- event text and body ----------------------------------------------------------


def test_rolled_back_text() -> None:
    assert event().text() == (
        "checkout 1.4.0: rolled back at canary 10% (weight 0%): "
        "stop criterion http_5xx_ratio tripped (0.031 > 0.01)"
    )


@pytest.mark.parametrize(
    ("kind", "changes", "expected"),
    [
        (
            "started",
            {"stage": "staging-soak", "weight": 0, "reason": None},
            "checkout 1.4.0: rollout from 1.3.2 started at staging-soak (weight 0%)",
        ),
        (
            "stage_changed",
            {"stage": "canary-25", "weight": 25, "reason": None},
            "checkout 1.4.0: moved on to canary-25 (weight 25%)",
        ),
        (
            "paused",
            {"reason": "3 inconclusive checks in a row", "weight": 10},
            "checkout 1.4.0: paused at canary 10% (weight 10%): 3 inconclusive checks in a row",
        ),
        (
            "blocked",
            {"stage": None, "weight": None, "reason": "router unreachable"},
            "checkout 1.4.0: blocked: router unreachable",
        ),
        (
            "succeeded",
            {"stage": "verify", "weight": 100, "reason": None},
            "checkout 1.4.0: succeeded at verify (weight 100%)",
        ),
    ],
)
def test_text_per_kind(kind: str, changes: dict[str, object], expected: str) -> None:
    assert event(kind, **changes).text() == expected


def test_text_is_one_line() -> None:
    line = event(reason="first line\nsecond\tline  ").text()
    assert "\n" not in line and line.endswith(": first line second line")


def test_as_json_has_every_field_and_the_line() -> None:
    body = event().as_json()
    assert body == {
        "kind": "rolled_back",
        "rollout_id": "ro-42",
        "service": "checkout",
        "version": "1.4.0",
        "stable": "1.3.2",
        "state": "rolled_back",
        "stage": "canary 10%",
        "weight": 0,
        "reason": "stop criterion http_5xx_ratio tripped (0.031 > 0.01)",
        "at": "2024-05-01T12:30:00+00:00",
        "text": event().text(),
    }


def test_slack_escaping_keeps_mentions_out() -> None:
    assert notifications._slack_escape("p99 <!channel> & more > 3") == (
        "p99 &lt;!channel&gt; &amp; more &gt; 3"
    )


# --- filtering and failure handling -----------------------------------------------


def test_only_subscribed_targets_are_called(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []

    def deliver(target: NotificationTarget, *_: object) -> tuple[bool, str]:
        called.append(target.name)
        return True, "HTTP 200"

    monkeypatch.setattr(notifications, "_deliver", deliver)
    targets = [
        NotificationTarget(name="all", kind="webhook", url=SECRET_URL),
        NotificationTarget(name="bad-news", kind="slack", url_env="H", events=["rolled_back"]),
        NotificationTarget(name="good-news", kind="command", command=["x"], events=["succeeded"]),
    ]
    outcomes = notify(targets, event("rolled_back"), environ={})
    assert called == ["all", "bad-news"]
    assert [(o.target, o.ok, o.detail) for o in outcomes] == [
        ("all", True, "HTTP 200"),
        ("bad-news", True, "HTTP 200"),
    ]
    called.clear()
    assert [o.target for o in notify(targets, event("succeeded"), environ={})] == [
        "all",
        "good-news",
    ]
    assert notify(targets, event("paused"), environ={})[0].target == "all"
    assert called == ["all", "good-news", "all"]


def test_a_bug_in_one_target_neither_raises_nor_stops_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def deliver(target: NotificationTarget, *_: object) -> tuple[bool, str]:
        if target.name == "first":
            raise RuntimeError(SECRET_URL)
        return True, "HTTP 204"

    monkeypatch.setattr(notifications, "_deliver", deliver)
    targets = [
        NotificationTarget(name="first", kind="webhook", url=SECRET_URL),
        NotificationTarget(name="second", kind="webhook", url=SECRET_URL),
    ]
    outcomes = notify(targets, event(), environ={})
    assert [(o.ok, o.detail) for o in outcomes] == [
        (False, "failed: RuntimeError"),
        (True, "HTTP 204"),
    ]


def test_missing_url_env_names_the_variable_only() -> None:
    target = NotificationTarget(name="slack", kind="slack", url_env="SLACK_HOOK")
    for environ in ({}, {"SLACK_HOOK": "  "}):
        [outcome] = notify([target], event(), environ=environ)
        assert not outcome.ok
        assert outcome.detail == "environment variable SLACK_HOOK is not set or empty"


def test_url_env_holding_a_non_http_value_does_not_echo_it() -> None:
    target = NotificationTarget(name="slack", kind="slack", url_env="SLACK_HOOK")
    value = "ftp://hooks.example.test/s3cr3t-token"
    with capture_logs() as logs:
        [outcome] = notify([target], event(), environ={"SLACK_HOOK": value})
    assert not outcome.ok and "SLACK_HOOK" in outcome.detail
    assert "s3cr3t" not in outcome.detail and "s3cr3t" not in repr(logs)


@pytest.mark.parametrize("kind", ["webhook", "slack"])
def test_detail_and_log_never_contain_the_url(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """httpx error messages can quote the URL; only the exception type may come through."""

    def post(self: httpx.Client, url: str, **_: object) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {url}")

    monkeypatch.setattr(httpx.Client, "post", post)
    targets = [
        NotificationTarget(name="direct", kind=kind, url=SECRET_URL),  # type: ignore[arg-type]
        NotificationTarget(name="env", kind=kind, url_env="HOOK"),  # type: ignore[arg-type]
    ]
    with capture_logs() as logs:
        outcomes = notify(targets, event(), environ={"HOOK": SECRET_URL})
    assert [(o.ok, o.detail) for o in outcomes] == [(False, "failed: ConnectError")] * 2
    assert [entry["event"] for entry in logs] == ["notification_failed"] * 2
    assert logs[0]["target"] == "direct" and logs[0]["kind"] == kind
    assert "s3cr3t" not in repr(logs)
    assert all("s3cr3t" not in o.detail and "hooks." not in o.detail for o in outcomes)


def test_unexpected_status_is_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    def post(self: httpx.Client, url: str, **_: object) -> httpx.Response:
        return httpx.Response(302, headers={"location": "https://elsewhere.test/"})

    monkeypatch.setattr(httpx.Client, "post", post)
    target = NotificationTarget(name="ops", kind="webhook", url=SECRET_URL)
    [outcome] = notify([target], event(), environ={})
    assert (outcome.ok, outcome.detail) == (False, "HTTP 302")
