"""Secrets are masked in everything the controller stores or sends, not only in logs:
events, incidents, notifications and the sentences tasks return."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.settings import get_settings
from controller import incidents, notifications
from controller.notifications import LifecycleEvent, NotificationTarget, notify
from controller.operations import abort_rollout
from controller.plan import Plan
from controller.redaction import MASK, redact, reset_redaction_cache
from controller.rollback import rollback
from controller.runbook import incident_document, open_or_update_incident
from controller.store import repository
from controller.store.models import Event
from tests.unit.test_state_machine import make_plan, start, state

World = tuple[Any, ...]  # the ``world`` fixture: runtime, metrics, router, clock, enqueued

SETTINGS_SECRET = "mtok-5f3a9c2e7b41d806"
LEAKY_URL = "https://user:pw@host/x?token=abc"
SECRETS = ("pw@", "token=abc", SETTINGS_SECRET)


@pytest.fixture
def settings_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Settings holding a secret (the /metrics token), loaded afresh for this test."""
    monkeypatch.setenv("CANARY_METRICS_TOKEN", SETTINGS_SECRET)
    get_settings.cache_clear()
    reset_redaction_cache()
    yield SETTINGS_SECRET
    get_settings.cache_clear()
    reset_redaction_cache()


def assert_masked(value: Any) -> None:
    """No secret anywhere in ``value``, whatever its shape."""
    text = value if isinstance(value, str) else json.dumps(value)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked: {text}"
    assert MASK in text


def leaky(text: str = "said") -> str:
    return f"{text} {LEAKY_URL} and {SETTINGS_SECRET}"


# --- the function ---------------------------------------------------------------------


def test_redact_masks_strings_dicts_and_lists_and_keeps_their_shape(settings_secret: str) -> None:
    value = {"message": leaky(), "items": [leaky(), 3, None], "pair": (leaky(), True)}
    masked = redact(value)
    assert masked["items"][1:] == [3, None] and masked["pair"][1] is True
    assert isinstance(masked["pair"], tuple)
    assert_masked(masked["message"])
    assert masked["message"] == f"said https://user:{MASK}@host/x?token={MASK} and {MASK}"


def test_redact_keeps_the_pattern_rules_when_settings_cannot_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANARY_DATABASE_URL", "mysql://nope")
    get_settings.cache_clear()
    reset_redaction_cache()
    try:
        assert redact(f"GET {LEAKY_URL}") == f"GET https://user:{MASK}@host/x?token={MASK}"
    finally:
        get_settings.cache_clear()
        reset_redaction_cache()


# --- events ---------------------------------------------------------------------------


def test_an_event_comes_back_from_the_store_masked(world: World, settings_secret: str) -> None:
    runtime, *_ = world
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        repository.append_event(
            session,
            rollout_id,
            "note",
            actor="tester",
            at=runtime.clock(),
            message=leaky("GET"),
            data={"url": LEAKY_URL, "steps": [{"detail": leaky()}], "count": 3},
        )
        session.commit()
    _, events = state(runtime, rollout_id)
    note = next(e for e in events if e.kind == "note")
    assert_masked(note.message)
    assert_masked(note.data)
    assert (
        note.data["count"] == 3 and note.data["url"] == f"https://user:{MASK}@host/x?token={MASK}"
    )


# --- incidents ------------------------------------------------------------------------


def test_an_incident_is_stored_and_shown_masked_even_from_unmasked_events(
    world: World, settings_secret: str
) -> None:
    runtime, *_ = world
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        # A row written before masking existed, straight into the table.
        session.add(
            Event(
                rollout_id=rollout_id,
                at=runtime.clock(),
                kind="runbook",
                actor="runbook",
                message=leaky("step 2/5"),
                data={"detail": leaky()},
            )
        )
        rollout = repository.get_rollout(session, rollout_id)
        rollout.reason = leaky("check failed:")
        incident = open_or_update_incident(
            session,
            rollout,
            now=runtime.clock(),
            severity="major",
            title=leaky("rolled back"),
            snapshot=[{"query": "up", "note": leaky()}],
        )
        stored = {
            "trigger": incident.trigger,
            "title": incident.title,
            "timeline": incident.timeline,
            "snapshot": incident.snapshot,
        }
        document = incident_document(incident, rollout)
    for part in stored.values():
        assert_masked(part)
    assert_masked(document)


def test_the_runbook_posts_an_incident_without_the_secrets_of_its_steps(
    world: World, settings_secret: str
) -> None:
    runtime, _, _, clock, _ = world
    posted: list[dict[str, Any]] = []
    runtime.post_incident = lambda document: posted.append(document) or "posted: HTTP 201"
    data = make_plan().model_dump(mode="json")
    script = f"echo 'scale down via {LEAKY_URL} {SETTINGS_SECRET}'; exit 3"
    data["runbook"] = {"disable_canary": {"command": ["/bin/sh", "-c", script]}}
    rollout_id = start(runtime, Plan.from_data(data))
    with runtime.sessions() as session:
        abort_rollout(session, rollout_id, reason=leaky("bad smell:"), actor="alice", now=clock())
    rollback(runtime, rollout_id)
    _, events = state(runtime, rollout_id)
    step4 = next(e for e in events if e.kind == "runbook" and e.data["step"] == 4)
    assert "exited 3" in step4.data["detail"]
    assert_masked(step4.data["detail"])
    assert len(posted) == 1
    assert_masked(posted[0])


def test_post_incident_masks_the_document_it_sends(
    monkeypatch: pytest.MonkeyPatch, settings_secret: str
) -> None:
    sent: list[dict[str, Any]] = []

    class Answer:
        status_code, is_success = 201, True

    def fake_post(url: str, json: dict[str, Any], **_: Any) -> Answer:
        sent.append(json)
        return Answer()

    monkeypatch.setattr(incidents.httpx, "post", fake_post)
    outcome = incidents.post_incident("http://incidents.test/", None, {"title": leaky()})
    assert outcome == "posted: HTTP 201"
    assert_masked(sent[0])


# --- notifications --------------------------------------------------------------------


def lifecycle_event() -> LifecycleEvent:
    return LifecycleEvent(
        kind="rolled_back",
        rollout_id="ro-1",
        service="checkout",
        version="1.4.0",
        stable="1.3.2",
        state="rolled_back",
        stage="canary",
        weight=0,
        reason=f"smoke check failed: GET {LEAKY_URL}&a=1 with {SETTINGS_SECRET}",
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_notification_payloads_are_masked(
    monkeypatch: pytest.MonkeyPatch, settings_secret: str
) -> None:
    bodies: list[dict[str, Any]] = []

    def capture(url: str, body: dict[str, Any], timeout: float) -> tuple[bool, str]:
        bodies.append(body)
        return True, "HTTP 200"

    monkeypatch.setattr(notifications, "_post_json", capture)
    targets = [
        NotificationTarget(name="hook", kind="webhook", url="http://hooks.test/x"),
        NotificationTarget(name="chat", kind="slack", url="http://hooks.test/y"),
    ]
    outcomes = notify(targets, lifecycle_event(), environ={})
    assert [o.ok for o in outcomes] == [True, True]
    webhook, slack = bodies
    assert_masked(webhook)
    assert_masked(slack["text"])


def test_a_command_target_reads_a_masked_event_and_its_error_is_recorded_masked(
    settings_secret: str, tmp_path: Path
) -> None:
    # The command keeps its stdin (the event) and prints a secret of its own.
    stdin = tmp_path / "stdin.json"
    target = NotificationTarget(
        name="script",
        kind="command",
        command=["/bin/sh", "-c", f"cat > {stdin}; echo 'via {LEAKY_URL}' >&2; exit 4"],
    )
    (outcome,) = notify([target], lifecycle_event(), environ={})
    assert not outcome.ok and outcome.detail.startswith("exit 4")
    assert_masked(outcome.detail)
    assert_masked(json.loads(stdin.read_text()))


def test_a_recorded_notification_event_is_masked(
    world: World, settings_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.lifecycle import send_notifications

    runtime, *_ = world
    data = make_plan().model_dump(mode="json")
    data["notifications"] = [{"name": "hook", "kind": "webhook", "url": "http://hooks.test/"}]
    rollout_id = start(runtime, Plan.from_data(data))
    monkeypatch.setattr(
        notifications, "_post_json", lambda url, body, timeout: (False, leaky("HTTP 500:"))
    )
    line = send_notifications(runtime, rollout_id, "started")
    assert "hook failed" in line
    _, events = state(runtime, rollout_id)
    recorded = next(e for e in events if e.kind == "notification")
    assert_masked(recorded.message)
    assert_masked(recorded.data)


# --- task results ---------------------------------------------------------------------


def test_a_task_returns_a_masked_sentence(
    world: World, settings_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.rollout

    runtime, *_ = world
    monkeypatch.setattr(tasks.rollout, "runtime", lambda: runtime)
    rollout_id = start(runtime, make_plan())
    with runtime.sessions() as session:
        row = repository.add_outbox(
            session, rollout_id, "notify", {"kind": "started"}, runtime.clock(), timedelta(1)
        )
        session.commit()
        row_id = row.id
    with runtime.sessions() as session:
        repository.finish_outbox(session, row_id, leaky("hook answered"), runtime.clock())
    sentence = tasks.rollout.notify_task(outbox_id=row_id, rollout_id=rollout_id)
    assert "already done" in sentence
    assert_masked(sentence)


def test_advance_and_rollback_tasks_return_masked_sentences(
    world: World, settings_secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.rollout

    class Result:
        acted = True

        def sentence(self) -> str:
            return leaky("ro-1 running at canary:")

    runtime, *_ = world
    monkeypatch.setattr(tasks.rollout, "runtime", lambda: runtime)
    monkeypatch.setattr(tasks.rollout, "advance", lambda rt, rollout_id: Result())
    monkeypatch.setattr(tasks.rollout, "rollback", lambda rt, rollout_id: Result())
    assert_masked(tasks.rollout.start_task(rollout_id="ro-1"))
    assert_masked(tasks.rollout.advance_task(rollout_id="ro-1"))
    assert_masked(tasks.rollout.rollback_task(rollout_id="ro-1"))
