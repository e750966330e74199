"""Notifications against real sockets and real processes: what a receiver gets, and
that dead, silent or trickling receivers and failing commands cost only their time
budget and end in ok=False."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.lab.ports import free_port
from controller.notifications import LifecycleEvent, NotificationTarget, notify

pytestmark = pytest.mark.integration

EVENT = LifecycleEvent(
    kind="rolled_back",
    rollout_id="ro-7",
    service="checkout",
    version="1.4.0",
    stable="1.3.2",
    state="rolled_back",
    stage="canary-10",
    weight=0,
    reason="stop criterion http_5xx_ratio tripped: 0.04 > 0.01 <!channel>",
    at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
)


@dataclass
class Received:
    path: str
    content_type: str
    body: Any


@dataclass
class Receiver:
    """A webhook receiver on loopback that records every POST it gets."""

    base_url: str
    requests: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Answers 200 on /hook, 500 on /broken and 302 on /redirect."""
    requests: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            requests.append(
                Received(self.path, self.headers.get("Content-Type", ""), json.loads(raw))
            )
            status = {"/broken": 500, "/redirect": 302}.get(self.path, 200)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/hook")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel completes the handshake (listen backlog) but nobody answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def trickling_port() -> Iterator[int]:
    """A server that sends a status line, then one header byte every 0.1 s: no single read
    ever waits long enough for a per-read timeout to fire."""
    stop = threading.Event()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.1):
                    try:
                        conn.sendall(b"X")
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def test_generic_webhook_gets_the_event_as_json(receiver: Receiver) -> None:
    target = NotificationTarget(name="ops", kind="webhook", url=f"{receiver.base_url}/hook")
    assert [(o.target, o.ok, o.detail) for o in notify([target], EVENT, environ={})] == [
        ("ops", True, "HTTP 200")
    ]
    [got] = receiver.requests
    assert got.path == "/hook"
    assert got.content_type == "application/json"
    assert got.body == EVENT.as_json()
    assert got.body["at"] == "2024-05-01T12:30:00+00:00"
    assert got.body["text"].startswith("checkout 1.4.0: rolled back at canary-10 (weight 0%): ")


def test_slack_gets_text_only_with_mentions_escaped(receiver: Receiver) -> None:
    target = NotificationTarget(name="slack", kind="slack", url=f"{receiver.base_url}/hook")
    [outcome] = notify([target], EVENT, environ={})
    assert outcome.ok and outcome.detail == "HTTP 200"
    [got] = receiver.requests
    assert got.body == {
        "text": "checkout 1.4.0: rolled back at canary-10 (weight 0%): "
        "stop criterion http_5xx_ratio tripped: 0.04 &gt; 0.01 &lt;!channel&gt;"
    }


def test_url_env_is_read_from_the_given_mapping(receiver: Receiver) -> None:
    target = NotificationTarget(name="slack", kind="slack", url_env="CANARY_TEST_SLACK_HOOK")
    assert "CANARY_TEST_SLACK_HOOK" not in os.environ
    environ = {"CANARY_TEST_SLACK_HOOK": f"{receiver.base_url}/hook"}
    [outcome] = notify([target], EVENT, environ=environ)
    assert (outcome.ok, outcome.detail) == (True, "HTTP 200")
    assert [r.path for r in receiver.requests] == ["/hook"]
    [missing] = notify([target], EVENT, environ={})
    assert not missing.ok and "CANARY_TEST_SLACK_HOOK" in missing.detail
    assert len(receiver.requests) == 1


def test_error_status_and_redirect_are_not_ok(receiver: Receiver) -> None:
    targets = [
        NotificationTarget(name="broken", kind="webhook", url=f"{receiver.base_url}/broken"),
        NotificationTarget(name="moved", kind="webhook", url=f"{receiver.base_url}/redirect"),
    ]
    outcomes = notify(targets, EVENT, environ={})
    assert [(o.ok, o.detail) for o in outcomes] == [(False, "HTTP 500"), (False, "HTTP 302")]
    assert [r.path for r in receiver.requests] == ["/broken", "/redirect"]  # not followed


def test_nothing_listening_fails_fast_without_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/services/s3cr3t"
    target = NotificationTarget(name="ops", kind="webhook", url=url, timeout_seconds=5)
    started = time.monotonic()
    [outcome] = notify([target], EVENT, environ={})
    assert time.monotonic() - started < 1.0
    assert (outcome.ok, outcome.detail) == (False, "failed: ConnectError")


def test_silent_receiver_costs_about_its_timeout(silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}/hook"
    target = NotificationTarget(name="ops", kind="slack", url=url, timeout_seconds=0.5)
    started = time.monotonic()
    [outcome] = notify([target], EVENT, environ={})
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.0
    assert not outcome.ok
    assert "timeout" in outcome.detail.lower() or "no answer within 0.5s" in outcome.detail
    assert str(silent_port) not in outcome.detail


def test_trickling_receiver_is_cut_off_at_the_deadline(trickling_port: int) -> None:
    url = f"http://127.0.0.1:{trickling_port}/hook"
    target = NotificationTarget(name="ops", kind="webhook", url=url, timeout_seconds=0.5)
    started = time.monotonic()
    [outcome] = notify([target], EVENT, environ={})
    assert time.monotonic() - started < 0.9
    assert (outcome.ok, outcome.detail) == (False, "failed: no answer within 0.5s")


def test_targets_run_one_after_another_within_their_budgets(
    silent_port: int, receiver: Receiver
) -> None:
    silent = f"http://127.0.0.1:{silent_port}/hook"
    targets = [
        NotificationTarget(name="silent-a", kind="webhook", url=silent, timeout_seconds=0.3),
        NotificationTarget(name="silent-b", kind="slack", url=silent, timeout_seconds=0.3),
        NotificationTarget(name="ok", kind="webhook", url=f"{receiver.base_url}/hook"),
    ]
    started = time.monotonic()
    outcomes = notify(targets, EVENT, environ={})
    assert time.monotonic() - started < 0.6 + 0.5
    assert [o.ok for o in outcomes] == [False, False, True]


RECORD_SCRIPT = """
import json, os, pathlib, sys
pathlib.Path(sys.argv[1]).write_text(json.dumps({
    "stdin": sys.stdin.read(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("CANARY_") or k == "BASE"},
}))
"""


def test_command_gets_the_event_on_stdin_and_in_env_but_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "event.json"
    target = NotificationTarget(
        name="pager", kind="command", command=[sys.executable, "-c", RECORD_SCRIPT, str(out)]
    )
    monkeypatch.setenv("CANARY_API_TOKENS", "ops:admin:0123456789abcdef0123")
    [outcome] = notify([target], EVENT, environ={"BASE": "not passed on"})
    assert (outcome.ok, outcome.detail) == (True, "exit 0")
    recorded = json.loads(out.read_text())
    assert json.loads(recorded["stdin"]) == EVENT.as_json()
    assert recorded["env"] == {
        "CANARY_EVENT_KIND": "rolled_back",
        "CANARY_ROLLOUT_ID": "ro-7",
        "CANARY_SERVICE": "checkout",
        "CANARY_STATE": "rolled_back",
    }


def test_failing_command_reports_exit_code_and_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('x' * 500 + '\\npager refused'); sys.exit(3)"
    target = NotificationTarget(
        name="pager", kind="command", command=[sys.executable, "-c", script]
    )
    [outcome] = notify([target], EVENT, environ={})
    assert not outcome.ok
    assert outcome.detail.startswith("exit 3: ")
    assert outcome.detail.endswith("x pager refused")
    assert len(outcome.detail) == len("exit 3: ") + 200


def test_hanging_command_is_killed_at_its_timeout() -> None:
    target = NotificationTarget(
        name="pager",
        kind="command",
        command=[sys.executable, "-c", "import time; time.sleep(30)"],
        timeout_seconds=0.5,
    )
    started = time.monotonic()
    [outcome] = notify([target], EVENT, environ={})
    assert time.monotonic() - started < 1.5
    assert (outcome.ok, outcome.detail) == (False, "failed: no exit within 0.5s")


def test_missing_program_is_reported_not_raised(tmp_path: Path) -> None:
    target = NotificationTarget(name="pager", kind="command", command=[str(tmp_path / "nope")])
    [outcome] = notify([target], EVENT, environ={})
    assert (outcome.ok, outcome.detail) == (False, "failed: FileNotFoundError")
