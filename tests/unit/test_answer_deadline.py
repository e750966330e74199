"""A check's timeout is a deadline for the whole answer: a server that trickles its
body a byte at a time (each read well inside the timeout) fails the check at its
timeout, instead of holding the check, and the task it runs in, until the task's
time limit; an endless body is cut at a size no check needs. Real servers on
loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller import checks
from controller.http_client import MAX_ANSWER_BYTES
from controller.plan import HttpCheck, VersionCheck
from controller.slots import served_version
from controller.traffic.base import RouterError


class _Trickle(BaseHTTPRequestHandler):
    """/slow: a byte every 0.2 s for 10 s; /huge: 2 MB at once; /ok: a short answer."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            if self.path.startswith("/slow"):
                for _ in range(50):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif self.path.startswith("/huge"):
                self.wfile.write(b" " * (2 * MAX_ANSWER_BYTES))
            self.wfile.write(b'{"version": "1.0.0", "status": "ok"}')
        except OSError:
            pass  # the client gave up: that is the point

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_trickled_answer_fails_the_check_at_its_timeout(base: str) -> None:
    check = HttpCheck(name="journey", url=f"{base}/slow", timeout="1s")
    started = time.monotonic()
    (result,) = checks.run_http([check], {})
    took = time.monotonic() - started
    assert not result.ok
    assert result.detail == "journey: no answer within 1s (ReadTimeout)"
    assert took < 3, f"the check took {took:.1f}s with a 1s timeout"


def test_an_endless_answer_is_cut(base: str) -> None:
    check = HttpCheck(name="journey", url=f"{base}/huge", body_contains="ok")
    (result,) = checks.run_http([check], {})
    assert not result.ok and "answer longer than 1048576 bytes" in result.detail


def test_a_short_answer_passes_as_before(base: str) -> None:
    check = HttpCheck(name="journey", url=f"{base}/ok", body_contains='"status": "ok"')
    (result,) = checks.run_http([check], {})
    assert result.ok, result.detail


def test_a_trickling_slot_is_no_version_at_its_timeout(base: str) -> None:
    check = VersionCheck(path="/slow", timeout="1s")
    started = time.monotonic()
    with pytest.raises(RouterError, match="ReadTimeout: answer not complete within 1s"):
        served_version(base, check)
    assert time.monotonic() - started < 3
    assert served_version(base, VersionCheck(path="/ok")) == "1.0.0"


class _Meeting(BaseHTTPRequestHandler):
    """/version answers only once both slots were asked: each request waits for the
    other at a barrier. Asked one after the other, the first never gets its answer."""

    barrier = threading.Barrier(2, timeout=5)

    def do_GET(self) -> None:  # noqa: N802
        try:
            self.barrier.wait()
            version = b"2.0"
        except threading.BrokenBarrierError:
            version = b"alone"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"version": "' + version + b'"}')

    def log_message(self, *args: object) -> None:
        pass


def test_both_slots_are_asked_their_version_at_the_same_time() -> None:
    from types import SimpleNamespace

    from controller.slots import version_mismatches

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Meeting) for _ in range(2)]
    for httpd in servers:
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    stable_url, canary_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    # Only the plan's version check matters here.
    check = VersionCheck(path="/version", timeout="10s")
    plan = SimpleNamespace(traffic=SimpleNamespace(version_check=check))
    values = {"stable_url": stable_url, "canary_url": canary_url}
    values |= {"stable_slot": "blue", "canary_slot": "green"}
    try:
        expected = {"stable": "2.0", "canary": "2.0"}
        assert version_mismatches(plan, values, expected) == []  # type: ignore[arg-type]
    finally:
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()
