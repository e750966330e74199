"""Container healthchecks for the controller image: ``python -m controller.probe``.

The image has no curl or wget (python:slim), and the ``canary`` CLI loads the
settings, the plans and the database driver before it does anything, which a
check every few seconds should not pay for. So the probes are standard library
only, and each says in one line what it found: Docker keeps that line in
``docker inspect`` next to the verdict.

* ``http URL``: the process answers (the API's and the demo service's
  ``/healthz``, Flower's ``/healthcheck``).
* ``worker --port P``: the worker's ``/metrics`` reports ``canary_worker_up 1``,
  which it sets only once Celery consumes its queues; a worker whose metrics
  server is up while it still looks for its broker is no worker.
* ``beat --schedule PATH``: beat wrote its schedule file recently. ``canary beat``
  syncs the file after every tick it sends, so its age is the time since beat last
  fired the reconcile task.

Exit 0 healthy, 1 unhealthy, 2 bad usage (as Docker reads a healthcheck's code).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

HEALTHY, UNHEALTHY = 0, 1
WORKER_UP = "canary_worker_up"
# Beat ticks every CANARY_RECONCILE_INTERVAL_SECONDS; a file older than a few ticks
# (plus slack for a busy host) means beat stopped sending.
BEAT_TICKS = 3
BEAT_SLACK_SECONDS = 10.0


class Unhealthy(Exception):
    """What the probe found wrong, one line."""


def fetch(url: str, timeout: float) -> str:
    """GET ``url`` without any proxy; the body as text on a 2xx, else ``Unhealthy``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.read(1_000_000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise Unhealthy(f"{url} answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:  # refused, timed out, unusable URL
        raise Unhealthy(f"{url} did not answer: {type(exc).__name__}: {exc}") from None


def check_http(url: str, timeout: float) -> str:
    fetch(url, timeout)
    return f"{url} answered"


def worker_up(metrics_text: str) -> bool:
    """Whether a worker's metrics say it consumes: a ``canary_worker_up`` sample of 1."""
    for line in metrics_text.splitlines():
        if line.startswith(WORKER_UP + "{") or line.startswith(WORKER_UP + " "):
            try:
                if float(line.rsplit(" ", 1)[1]) == 1.0:
                    return True
            except (IndexError, ValueError):
                continue
    return False


def check_worker(port: int, timeout: float) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    if not worker_up(fetch(url, timeout)):
        raise Unhealthy(f"{url}: {WORKER_UP} is not 1: the worker does not consume (yet)")
    return "worker consumes its queues"


def beat_max_age(environ: Mapping[str, str]) -> float:
    """How old the schedule file may be: a few reconcile intervals, plus slack."""
    raw = environ.get("CANARY_RECONCILE_INTERVAL_SECONDS", "2")
    try:
        interval = float(raw)
    except ValueError:
        interval = 2.0
    return BEAT_TICKS * max(interval, 0.1) + BEAT_SLACK_SECONDS


def check_beat(schedule: Path, max_age: float, now: float | None = None) -> str:
    """The newest of the schedule's files (``dbm`` may add ``.dat``/``.dir``/``.db``)."""
    candidates = [schedule, *schedule.parent.glob(schedule.name + ".*")]
    mtimes = [path.stat().st_mtime for path in candidates if path.is_file()]
    if not mtimes:
        raise Unhealthy(f"no schedule file at {schedule}: beat has not started")
    age = (time.time() if now is None else now) - max(mtimes)
    if age > max_age:
        raise Unhealthy(f"beat last wrote {schedule} {age:.0f}s ago (limit {max_age:.0f}s)")
    return f"beat wrote its schedule {age:.0f}s ago"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.probe", description=__doc__)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per request")
    sub = parser.add_subparsers(dest="probe", required=True)
    http = sub.add_parser("http", help="GET a URL, healthy on 2xx")
    http.add_argument("url")
    worker = sub.add_parser("worker", help="a worker's /metrics says it consumes")
    worker.add_argument("--port", type=int, required=True)
    beat = sub.add_parser("beat", help="beat wrote its schedule file recently")
    beat.add_argument("--schedule", type=Path, required=True)
    beat.add_argument("--max-age", type=float, default=None, help="seconds (default: 3 ticks+10)")
    args = parser.parse_args(argv)
    try:
        if args.probe == "http":
            message = check_http(args.url, args.timeout)
        elif args.probe == "worker":
            message = check_worker(args.port, args.timeout)
        else:
            max_age = args.max_age if args.max_age is not None else beat_max_age(os.environ)
            message = check_beat(args.schedule, max_age)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return UNHEALTHY
    print(f"healthy: {message}")
    return HEALTHY


if __name__ == "__main__":
    sys.exit(main())
