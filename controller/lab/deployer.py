"""A deploy system's API for the lab: ``POST /deploy?slot=S&version=V`` answers 202 at
once and replaces that slot's process with the version in the background, the way a
CD system starts a deploy and reports later. Plans in ``redeploy`` mode call it from
their hook, then wait for the slot's version check."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import structlog

log = structlog.get_logger(__name__)

_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]{1,128}$")


class Deployer:
    """The HTTP server and the deploys asked of it, ``[(slot, version), ...]``."""

    def __init__(self, redeploy: Callable[[str, str], None]):
        self.redeploy = redeploy
        self.deploys: list[tuple[str, str]] = []
        # Deploys run one at a time, in the order asked, as a CD system runs the
        # deploys of one service: a rollback's deploy of the stable version back never
        # races the release's deploy it undoes.
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        threading.Thread(target=self._run_deploys, daemon=True).start()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _run_deploys(self) -> None:
        while True:
            slot, version = self._queue.get()
            self._deploy(slot, version)

    def _deploy(self, slot: str, version: str) -> None:
        try:
            self.redeploy(slot, version)
        except Exception as exc:  # the slot's version check shows the deploy failed
            log.warning("lab_deploy_failed", slot=slot, version=version, error=str(exc))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        deployer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                slot, version = query.get("slot", ""), query.get("version", "")
                if parts.path != "/deploy" or not (_VALUE.match(slot) and _VALUE.match(version)):
                    self.send_response(400)
                    self.end_headers()
                    return
                # Recorded when asked, before it runs: the slot serves the new version
                # (and the rollout can finish) before ``redeploy`` returns.
                deployer.deploys.append((slot, version))
                deployer._queue.put((slot, version))
                self.send_response(202)
                self.end_headers()

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
