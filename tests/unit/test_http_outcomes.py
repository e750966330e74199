"""What counts as a failure for the soak's load and for the incident post, against a
small loopback HTTP server that answers what each test tells it to."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller import incidents
from controller.incidents import post_incident
from controller.soak import send_burst


class Scripted:
    """Answers each request with the next status of ``statuses`` (the last one repeats)."""

    def __init__(self) -> None:
        self.statuses: list[int] = [200]
        self.seen = 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                index = min(scripted.seen, len(scripted.statuses) - 1)
                scripted.seen += 1
                self.send_response(scripted.statuses[index])
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer  # noqa: N815 - the stdlib's names

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.server.shutdown()


@pytest.mark.parametrize(("status", "failed"), [(200, 0), (302, 0), (404, 5), (401, 5), (503, 5)])
def test_soak_load_counts_anything_but_2xx_and_3xx_as_failed(
    scripted: Scripted, status: int, failed: int
) -> None:
    scripted.statuses = [status]
    assert send_burst(scripted.url, 5) == (5, failed)


def test_soak_load_to_an_unusable_url_fails_instead_of_raising() -> None:
    assert send_burst("http://a:b:c/", 3) == (3, 3)


def test_incident_post_is_retried_on_5xx_and_not_on_4xx(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(incidents, "BACKOFF_SECONDS", 0)
    scripted.statuses = [503, 502, 201]
    assert post_incident(scripted.url, None, {"id": "inc-1"}) == "posted: HTTP 201"
    assert scripted.seen == 3
    scripted.statuses, scripted.seen = [422], 0
    assert post_incident(scripted.url, None, {}) == "failed: HTTP 422 after 1 attempt(s)"
    scripted.statuses, scripted.seen = [500], 0
    assert post_incident(scripted.url, None, {}) == "failed: HTTP 500 after 3 attempt(s)"
    assert post_incident("http://a:b:c/", None, {}).startswith("failed: InvalidURL")
