"""The shared HTTP client keeps nothing from one check to the next."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.http_client import shared_client


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client closes
    seen: list[tuple[str | None, int]] = []

    def do_GET(self) -> None:  # noqa: N802
        _Recorder.seen.append((self.headers.get("Cookie"), self.client_address[1]))
        body = b"v1"
        self.send_response(200)
        self.send_header("Set-Cookie", "session=abc; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/version"
    httpd.shutdown()
    httpd.server_close()


def test_no_cookie_from_one_call_reaches_the_next(server: str) -> None:
    client = shared_client()
    for _ in range(3):
        assert client.get(server, timeout=5).text == "v1"
    assert [cookie for cookie, _ in _Recorder.seen] == [None, None, None]


def test_no_connection_is_kept_between_calls(server: str) -> None:
    client = shared_client()
    for _ in range(3):
        client.get(server, timeout=5)
    ports = [port for _, port in _Recorder.seen]
    assert len(set(ports)) == 3, ports


def test_one_client_per_process() -> None:
    assert shared_client() is shared_client()
