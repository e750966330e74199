"""Rollouts when parts fail: Prometheus stops mid-canary or answers too slowly for a
task's time limit, a worker is killed with SIGKILL mid-rollout. Each test has a lab of
its own, since it breaks it."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from controller.store import repository
from controller.store.db import session_factory
from tests.integration.rollout_helpers import (
    PLAN,
    assert_no_step_done_twice,
    at_canary,
    begin,
    deploy,
    finished,
    snapshot,
    start_lab,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_prometheus_stopped_mid_canary_never_promotes(tmp_path: Path, postgres_url: str) -> None:
    lab = start_lab(tmp_path, postgres_url)
    try:
        lab.start_controller()
        version = deploy(lab)
        rollout_id = begin(lab, version)
        wait_for(lab, rollout_id, at_canary)
        assert lab.prometheus is not None
        lab.prometheus.stop()
        rollout = wait_for(lab, rollout_id, lambda r, _e: r.state != "running", timeout=60)
        assert rollout.state == "paused" and "ended in an error" in rollout.reason
        assert "Prometheus" in rollout.reason
        time.sleep(3)  # and it stays there: nothing promotes a paused rollout
        rollout, events = snapshot(lab, rollout_id)
        assert rollout.state == "paused" and rollout.weight == 10
        assert lab.router().get_canary_weight() == 10
        criteria = {
            c.name for c in PLAN.stop_criteria
        }  # the slot version check needs no Prometheus
        after_stop = [
            e for e in events if e.kind == "measurement" and e.data["criterion"] in criteria
        ][-5:]
        assert {e.data["verdict"] for e in after_stop} == {"error"}
        promoted = [e for e in events if e.kind == "step_completed" and e.step_index >= 1]
        assert promoted == []
    finally:
        lab.stop()


def test_worker_killed_mid_rollout_another_finishes(tmp_path: Path, postgres_url: str) -> None:
    # The shortest time limit whose soft limit still leaves room for the checks of one
    # advance (config.settings), and a lease just above it: the killed worker's lease
    # expires as soon as the settings allow.
    lab = start_lab(tmp_path, postgres_url, lease_seconds=37.0, task_time_limit_seconds=36.0)
    try:
        first = lab.start_worker("first", "rollouts", concurrency=1)
        lab.start_worker("rollback", "rollback,reconcile", concurrency=1)
        lab.start_beat()
        version = deploy(lab)
        rollout_id = begin(lab, version)
        wait_for(lab, rollout_id, at_canary)
        sessions = session_factory(lab.database_url)
        deadline = time.monotonic() + 20
        held = False
        while time.monotonic() < deadline and not held:  # kill it while it holds the lease
            with sessions() as session:
                held = repository.get_rollout(session, rollout_id).lease_owner is not None
        first.kill()
        assert held, "the first worker never held the rollout's lease"
        lab.start_worker("second", "rollouts", concurrency=1)
        rollout = wait_for(lab, rollout_id, finished, timeout=150)
        _, events = snapshot(lab, rollout_id)
        assert rollout.state == "succeeded", rollout.reason
        assert [e.data["weight"] for e in events if e.kind == "weight_set"] == [0, 10, 25, 50, 100]
        assert_no_step_done_twice(events)
        # As a supervisor would, the lab starts again what exited (and only that).
        [revived] = lab.revive_exited()
        assert revived.startswith("first exited on its own (code -9"), revived
        assert lab.workers["first"].alive and lab.revive_exited() == []
    finally:
        lab.stop()


class SlowProxy:
    """An HTTP proxy in front of the lab's Prometheus that holds every request for
    ``delay`` seconds before passing it on, like a Prometheus grinding through a
    heavy query."""

    def __init__(self, upstream: str) -> None:
        self.delay = 0.0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.forward()

            def do_POST(self) -> None:  # noqa: N802
                self.forward()

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                held_until = time.monotonic() + proxy.delay
                while time.monotonic() < held_until and not proxy.closed:
                    time.sleep(0.1)
                answer = httpx.request(
                    self.command,
                    upstream + self.path,
                    content=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    timeout=10,
                )
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", ""))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                pass

        self.closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


def test_a_real_soft_time_limit_mid_step_decides_nothing(tmp_path: Path, postgres_url: str) -> None:
    """Prometheus answering slower than a task may run: Celery's soft time limit ends
    the advance in the middle of its stop criteria. That is an error that says what was
    running, never a failed check: no rollback, no promotion, and the rollout carries
    on once Prometheus is quick again."""
    lab = start_lab(tmp_path, postgres_url, lease_seconds=37.0, task_time_limit_seconds=36.0)
    assert lab.prometheus is not None
    proxy = SlowProxy(lab.prometheus.url)
    try:
        lab.settings.extra_env.update(
            {
                "CANARY_PROMETHEUS_URL": proxy.url,
                "CANARY_PROMETHEUS_TIMEOUT_SECONDS": "60",
                "CANARY_PROMETHEUS_ATTEMPTS": "1",
            }
        )
        lab.start_controller()
        version = deploy(lab)
        rollout_id = begin(lab, version)
        wait_for(lab, rollout_id, at_canary)
        proxy.delay = 120.0  # far past the soft limit (36 s - 5 s)

        def out_of_time(_rollout: object, events: list) -> bool:
            return any(e.kind == "error" and e.data.get("error") == "out_of_time" for e in events)

        wait_for(lab, rollout_id, out_of_time, timeout=90)
        rollout, events = snapshot(lab, rollout_id)
        error = next(e for e in events if e.kind == "error" and e.data["error"] == "out_of_time")
        assert error.data["running"] == "stop criteria", error.data
        assert "nothing decided" in error.message
        assert rollout.state == "running" and rollout.weight > 0, rollout.reason
        assert lab.router().get_canary_weight() == rollout.weight
        decided = {e.data["decision"] for e in events if e.kind == "decision"}
        assert decided <= {"promote"}, "a time limit rolled back or paused the rollout"

        proxy.delay = 0.0
        rollout = wait_for(lab, rollout_id, finished, timeout=150)
        assert rollout.state == "succeeded", rollout.reason
    finally:
        proxy.close()
        lab.stop()
