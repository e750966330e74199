"""Secrets are masked in everything the controller stores or sends, not only in logs:
events, incidents, notifications, the sentences tasks return and the API's answers,
in every shape plans, commands and hooks write them; and a hook's URL can stay out
of the plan altogether (``url_env``)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from config import PLANS_DIR
from config.settings import Settings, get_settings
from controller import incidents, notifications
from controller.api.app import create_app
from controller.checks import run_command
from controller.hooks import run_hook
from controller.logging import configure_logging
from controller.notifications import STDERR_CHARS, LifecycleEvent, NotificationTarget, notify
from controller.operations import abort_rollout
from controller.plan import CanaryDisable, CommandCheck, Plan
from controller.plan_loader import parse_plan
from controller.plan_registry import register_plan
from controller.redaction import MASK, redact, reset_redaction_cache
from controller.rollback import rollback
from controller.runbook import incident_document, open_or_update_incident
from controller.store import repository
from controller.store.models import Event, Incident
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


# --- the shapes a secret takes ----------------------------------------------------------

# (text, the secret in it): each shape as plans, commands and hooks write it.
SHAPES = [
    pytest.param(
        "GET http://ghpUserinfoT0ken41@git.internal/x: 401",
        "ghpUserinfoT0ken41",
        id="token-as-the-only-userinfo",
    ),
    pytest.param(
        "GET https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=sasSig0a1b2c&se=2026",
        "sasSig0a1b2c",
        id="sig-query-parameter",
    ),
    pytest.param(
        "GET https://api.test/v1/x?api-key=apiKeyQ9w8e7&page=2",
        "apiKeyQ9w8e7",
        id="api-key-query-parameter",
    ),
    pytest.param(
        "POST https://hooks.slack.com/services/T000/B000/XXXXslackPath: 404",
        "XXXXslackPath",
        id="slack-hook-path",
    ),
    pytest.param(
        "POST https://hooks.example.net/h/Zq3xY8pL0mN4vB7cT2wR9sK1: 404",
        "Zq3xY8pL0mN4vB7cT2wR9sK1",
        id="generated-path-segment",
    ),
    pytest.param(
        "> Authorization: Basic dXNlcjpodW50ZXIy\n< HTTP/1.1 401 Unauthorized",
        "dXNlcjpodW50ZXIy",
        id="authorization-basic-header",
    ),
    pytest.param(
        "sent headers {'authorization': 'Basic dXNlcjpodW50ZXIy', 'accept': '*/*'}",
        "dXNlcjpodW50ZXIy",
        id="authorization-basic-in-a-repr",
    ),
    pytest.param(
        "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Signature=amzSig5f4e3d",
        "amzSig5f4e3d",
        id="x-amz-signature",
    ),
    pytest.param(
        "curl -H 'x-api-key: xApiKey6543' https://api.test/",
        "xApiKey6543",
        id="x-api-key-header",
    ),
    pytest.param(
        'config {"private_key": "privKeyBody9", "region": "eu"}',
        "privKeyBody9",
        id="private-key-in-json",
    ),
    pytest.param(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpemBody9\n-----END RSA PRIVATE KEY-----",
        "MIIEpemBody9",
        id="private-key-in-pem",
    ),
    pytest.param(
        "ssh:\n  passphrase: open sesame 42\n  user: deploy",
        "sesame 42",
        id="passphrase-config-line",
    ),
    pytest.param(
        '{"passphrase": "open sesame 42"}',
        "sesame 42",
        id="passphrase-in-json",
    ),
]


@pytest.mark.parametrize(("text", "secret"), SHAPES)
def test_redact_masks_each_shape_a_secret_takes(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked, masked
    assert MASK in masked
    assert redact(masked) == masked  # masking again changes nothing


def test_the_values_of_the_newer_secret_keys_are_masked() -> None:
    headers = {"x-api-key": "k1", "X-Amz-Signature": "k2", "accept": "*/*"}
    masked = redact({"private_key": "k3", "passphrase": "k4", "headers": headers})
    assert masked == {
        "private_key": MASK,
        "passphrase": MASK,
        "headers": {"x-api-key": MASK, "X-Amz-Signature": MASK, "accept": "*/*"},
    }


@pytest.mark.parametrize(
    "text",
    [
        "http_5xx_vs_baseline: pass: canary 0.0012 vs baseline 0.0010: 1.2x <= 2x",
        "api_token_errors: fail: 3 > 0 for 5m",
        'sum(rate(http_requests_total{service="checkout",version="2.0.0",code=~"5.."}[1m]))',
        "stable-health: GET http://checkout-stable:8080/v1/healthz?verbose=1: status 503",
        "see https://grafana.internal/d/abc123/checkout?orgId=1",
        "monkey: banana, tokenizer: on",
    ],
)
def test_what_holds_no_secret_stays_readable(text: str) -> None:
    """The verdicts, queries and URLs people read keep every word."""
    assert redact(text) == text


def test_the_shipped_plans_read_the_same_masked() -> None:
    """Their text holds no secret: masking a plan for a viewer changes none of it."""
    for path in sorted(PLANS_DIR.glob("*.yaml")):
        text = path.read_text()
        assert redact(text) == text, path.name


def test_a_hook_masks_its_output_before_cutting_it() -> None:
    """The record keeps the output's last 300 characters; cut first, the cut falls
    between ``https://ci:`` and the password, and what is left no rule recognises."""
    secret = "hookPassw0rd"
    head = f"{secret}@artifacts.internal/"
    tail = head + "x" * (300 - len(head))
    hook = CanaryDisable(command=["printf", "%s", f"upload to https://ci:{tail}"])
    ok, detail = run_hook(hook, {})
    assert ok and detail.endswith("x" * 50)
    assert secret not in detail, detail


def test_a_command_check_masks_its_last_line_before_cutting_it(settings_secret: str) -> None:
    """The record keeps the first 200 characters of the last line: a settings secret
    cut in two there is no longer the value the redactor knows."""
    line = "y" * 190 + settings_secret
    check = CommandCheck(name="ci", command=["printf", "%s", line])
    result = run_command(check, {})
    assert result.ok and result.detail.startswith("exit 0: " + "y" * 190)
    assert settings_secret[:8] not in result.detail, result.detail


def test_a_command_target_masks_its_stderr_before_cutting_it(tmp_path: Path) -> None:
    secret = "notifyPassw0rd"
    head = f"{secret}@chat.internal/"
    tail = head + "z" * (STDERR_CHARS - len(head))
    target = NotificationTarget(
        name="script",
        kind="command",
        command=["/bin/sh", "-c", f"printf '%s' 'posting to https://bot:{tail}' >&2; exit 1"],
    )
    (outcome,) = notify([target], lifecycle_event(), environ={})
    assert not outcome.ok and outcome.detail.endswith("z" * 50)
    assert secret not in outcome.detail, outcome.detail


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


# --- hooks: a URL from the environment ------------------------------------------------


@dataclass
class Receiver:
    """A real HTTP server on loopback: answers every request with ``status`` and keeps
    the paths it was sent (query included), to show where a call really went."""

    url: str
    paths: list[str]
    status: int = 503


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    paths: list[str] = []
    found = Receiver("", paths)

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            paths.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(found.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer  # noqa: N815

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def env_hook(variable: str = "CANARY_TEST_HOOK_URL") -> CanaryDisable:
    return CanaryDisable.model_validate({"http": {"url_env": variable}})


def test_an_http_hook_takes_its_url_from_the_environment_and_never_quotes_it(
    receiver: Receiver,
) -> None:
    secret_url = f"{receiver.url}/disable/plainwordsecret"
    receiver.status = 202
    ok, detail = run_hook(env_hook(), {}, environ={"CANARY_TEST_HOOK_URL": secret_url})
    assert ok and detail == "POST $CANARY_TEST_HOOK_URL: 202"
    assert receiver.paths == ["/disable/plainwordsecret"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "environment variable CANARY_TEST_HOOK_URL is not set or empty"),
        ("ftp://files.internal/plainwordsecret", "$CANARY_TEST_HOOK_URL is not an http(s) URL"),
        (
            "http://169.254.169.254/plainwordsecret",
            "host 169.254.169.254 is a cloud metadata address",
        ),
    ],
    ids=["unset", "not-http", "metadata-address"],
)
def test_an_unusable_url_from_the_environment_fails_the_hook_without_quoting_it(
    value: str, why: str
) -> None:
    ok, detail = run_hook(env_hook(), {}, environ={"CANARY_TEST_HOOK_URL": value})
    assert not ok and why in detail, detail
    assert "plainwordsecret" not in detail


def test_an_http_hook_needs_exactly_one_of_url_and_url_env() -> None:
    both = {"url": "http://deploy.internal/x", "url_env": "DEPLOY_URL"}
    for http in (both, {"method": "POST"}):
        with pytest.raises(ValueError, match="give exactly one of url or url_env"):
            CanaryDisable.model_validate({"http": http})
    with pytest.raises(ValueError, match="url_env"):
        CanaryDisable.model_validate({"http": {"url_env": "NOT A NAME"}})


# --- what a viewer reads after a rollback whose runbook met secrets -------------------

USERINFO_TOKEN = "ghpUserinfoT0ken41"
SIG = "sasSig0a1b2c"
API_KEY = "apiKeyQ9w8e7"
GENERATED = "Zq3xY8pL0mN4vB7cT2wR9sK1"
AMZ_SIGNATURE = "amzSig5f4e3d"
BASIC = "dXNlcjpodW50ZXIy"
X_API_KEY = "xApiKey6543"
PRIVATE_KEY = "privKeyBody9"
PASSPHRASE = "open sesame 42"
SLACK_PATH = "slackPathSecret7"
ENV_ONLY = "plainwordsecret"  # no shape gives it away: only url_env keeps it out
RUNBOOK_SECRETS = (
    USERINFO_TOKEN,
    SIG,
    API_KEY,
    GENERATED,
    AMZ_SIGNATURE,
    BASIC,
    X_API_KEY,
    PRIVATE_KEY,
    "sesame 42",
    SLACK_PATH,
    ENV_ONLY,
)
VIEWER_TOKEN = "viewer-token-0123456789"

# The disable hook three ways: a command whose output quotes secrets, an HTTP call to
# a URL that carries them, and an HTTP call to a URL the plan names by variable.
DISABLE_HOOKS = {
    "command": """
    command:
      - /bin/sh
      - -c
      - |
        echo 'Authorization: Basic {BASIC}' >&2
        echo 'x-api-key: {X_API_KEY}' >&2
        echo '{{"private_key": "{PRIVATE_KEY}", "passphrase": "{PASSPHRASE}"}}' >&2
        echo 'POST https://hooks.slack.com/services/T000/B000/{SLACK_PATH} failed' >&2
        exit 3""",
    "http": """
    http: {{method: POST, url: "http://{USERINFO_TOKEN}@{HOST}/disable/{GENERATED}?sig={SIG}"}}""",
    "http-url-env": """
    http: {{method: POST, url_env: CANARY_TEST_DISABLE_URL}}""",
}
# What step 4 records for each, to see that the hook ran.
HOOK_RAN = {"command": "exited 3", "http": ": 503", "http-url-env": "$CANARY_TEST_DISABLE_URL: 503"}


RUNBOOK = """
runbook:
  stable_healthchecks:
    - {{name: stable-health, url: "http://{USERINFO_TOKEN}@{HOST}/health?sig={SIG}&api-key={API_KEY}"}}
  smoke_checks:
    - {{name: journey, url: "http://{HOST}/journey/{GENERATED}?X-Amz-Signature={AMZ_SIGNATURE}"}}
  disable_canary:{DISABLE}
"""


def leaky_plan_text(host: str, hook: str) -> str:
    """The unit plan with a runbook whose healthcheck URLs carry secrets in four shapes
    and whose disable hook is ``hook``, written as a person writes YAML."""
    base = make_plan().model_dump(mode="json", exclude_none=True)
    base.pop("runbook")
    runbook = RUNBOOK.replace("{DISABLE}", DISABLE_HOOKS[hook]).format(
        HOST=host,
        USERINFO_TOKEN=USERINFO_TOKEN,
        SIG=SIG,
        API_KEY=API_KEY,
        GENERATED=GENERATED,
        AMZ_SIGNATURE=AMZ_SIGNATURE,
        BASIC=BASIC,
        X_API_KEY=X_API_KEY,
        PRIVATE_KEY=PRIVATE_KEY,
        PASSPHRASE=PASSPHRASE,
        SLACK_PATH=SLACK_PATH,
    )
    return yaml.safe_dump(base, sort_keys=False) + runbook


@pytest.fixture
def json_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """The process's log as a worker writes it (JSON lines on stderr, through the
    redactor); the previous logging set-up is put back afterwards."""
    saved_config, root = structlog.get_config(), logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(json=True)
    try:
        yield lambda: capsys.readouterr().err
    finally:
        structlog.configure(**saved_config)
        root.handlers[:], root.level = saved_handlers, saved_level


@pytest.mark.parametrize("hook", list(DISABLE_HOOKS))
def test_a_viewer_reads_no_secret_of_a_rolled_back_runbook(
    hook: str,
    world: World,
    tmp_path: Path,
    receiver: Receiver,
    json_log: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registered plan whose runbook healthchecks and hook meet secrets in every
    shape, rolled back: the rollout, its events, its incident (stored, posted and
    served), the plan's text and the worker's log show none of them, while the calls
    went to the real URLs."""
    runtime, _, _, clock, _ = world
    monkeypatch.setenv("CANARY_TEST_DISABLE_URL", f"{receiver.url}/disable/{ENV_ONLY}")
    posted: list[dict[str, Any]] = []
    runtime.post_incident = lambda document: posted.append(document) or "posted: HTTP 201"
    text = leaky_plan_text(receiver.url.removeprefix("http://"), hook)
    with runtime.sessions() as session:
        register_plan(session, "leaky", text, registered_by="ada", now=clock())
    rollout_id = start(runtime, parse_plan(text))
    with runtime.sessions() as session:
        reason = f"saw http://{USERINFO_TOKEN}@grafana.internal/d/x?api-key={API_KEY}"
        abort_rollout(session, rollout_id, reason=reason, actor="alice", now=clock())
    rollback(runtime, rollout_id)

    _, events = state(runtime, rollout_id)
    step4 = next(e for e in events if e.kind == "runbook" and e.data["step"] == 4)
    assert HOOK_RAN[hook] in step4.data["detail"], step4.data["detail"]
    assert f"/health?sig={SIG}&api-key={API_KEY}" in receiver.paths  # the real URL was called
    if hook == "http-url-env":
        assert f"/disable/{ENV_ONLY}" in receiver.paths
    with runtime.sessions() as session:
        stored = session.scalars(select(Incident)).one()
        stored_incident = json.dumps([stored.trigger, stored.title, stored.timeline])

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'state.db'}", api_tokens=f"vic:viewer:{VIEWER_TOKEN}"
    )
    client = TestClient(create_app(settings, enqueue_rollback=lambda _rollout_id: None))
    viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    paths = [
        f"/api/v1/rollouts/{rollout_id}",
        f"/api/v1/rollouts/{rollout_id}/events",
        f"/api/v1/rollouts/{rollout_id}/incident",
        "/api/v1/plans/leaky",
    ]
    answers = {path: client.get(path, headers=viewer) for path in paths}
    assert {path: a.status_code for path, a in answers.items()} == dict.fromkeys(paths, 200)
    assert answers["/api/v1/plans/leaky"].json()["masked"] is True

    seen = {
        **{path: answer.text for path, answer in answers.items()},
        "stored incident": stored_incident,
        "posted incident": json.dumps(posted),
        "worker log": json_log(),
    }
    assert "runbook_step" in seen["worker log"]
    for where, shown in seen.items():
        leaked = [secret for secret in RUNBOOK_SECRETS if secret in shown]
        assert not leaked, f"{where} shows {leaked}: {shown}"
