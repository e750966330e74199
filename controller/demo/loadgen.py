"""Steady synthetic user traffic, so a canary always has requests to be judged on.

Each target gets one background thread with its own reused HTTP client that
paces requests to a fixed rate. Connection failures are counted (as
``"error"``) rather than raised: during a rollout a target may legitimately
be down for a moment, and the load must keep flowing regardless.

Run: ``python -m controller.demo.loadgen --target http://127.0.0.1:8080/=20``
(stops on SIGTERM or Ctrl-C and prints the counts as JSON).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from types import TracebackType

import httpx

ERROR_KEY = "error"
# If pacing falls this far behind (slow target), skip the backlog instead of bursting.
MAX_LAG_SECONDS = 1.0


class LoadGenerator:
    """Sends GET requests to each ``(url, requests_per_second)`` target until stopped."""

    def __init__(self, targets: list[tuple[str, float]], timeout: float = 2.0) -> None:
        for url, rate in targets:
            if rate <= 0:
                raise ValueError(f"rate for {url} must be > 0 requests per second, got {rate}")
        self.targets = list(targets)
        self.timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {url: Counter() for url, _ in self.targets}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one pacing thread per target (no-op if already running)."""
        if self._threads:
            return
        self._stop.clear()
        for index, (url, rate) in enumerate(self.targets):
            thread = threading.Thread(
                target=self._run, args=(url, rate), name=f"loadgen-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending and wait for in-flight requests (bounded by the request timeout)."""
        self._stop.set()
        join_timeout = timeout if timeout is not None else self.timeout + 1.0
        for thread in self._threads:
            thread.join(join_timeout)
        self._threads = []

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def counts(self) -> dict[str, int]:
        """Responses so far across all targets, keyed by status code (``"200"``) or ``"error"``."""
        total: Counter[str] = Counter()
        with self._lock:
            for per_target in self._counts.values():
                total.update(per_target)
        return dict(total)

    def counts_by_target(self) -> dict[str, dict[str, int]]:
        """Like :meth:`counts`, split per target URL."""
        with self._lock:
            return {url: dict(per_target) for url, per_target in self._counts.items()}

    def _record(self, url: str, key: str) -> None:
        with self._lock:
            self._counts[url][key] += 1

    def _run(self, url: str, rate: float) -> None:
        interval = 1.0 / rate
        with httpx.Client(timeout=self.timeout, trust_env=False) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                try:
                    response = client.get(url)
                    self._record(url, str(response.status_code))
                except httpx.HTTPError:
                    self._record(url, ERROR_KEY)
                next_at += interval
                now = time.monotonic()
                if now - next_at > MAX_LAG_SECONDS:
                    next_at = now

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def parse_target(text: str) -> tuple[str, float]:
    """Parse ``URL=RPS``; the last ``=`` splits, so URLs with query strings work."""
    url, sep, rate = text.rpartition("=")
    if not sep or not url:
        raise argparse.ArgumentTypeError(f"expected URL=RPS, got {text!r}")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"RPS must be a number in {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"RPS must be > 0 in {text!r}")
    return url, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.demo.loadgen", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--target", type=parse_target, action="append", required=True, help="URL=RPS, repeatable"
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="per-request timeout (s)")
    parser.add_argument(
        "--report-interval",
        type=float,
        default=0.0,
        help="print counts every N seconds (0: only at exit)",
    )
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: done.set())

    generator = LoadGenerator(args.target, timeout=args.timeout)
    generator.start()
    next_report = time.monotonic() + args.report_interval
    # Short waits keep the loop responsive to the signal handler.
    while not done.wait(0.2):
        if args.report_interval > 0 and time.monotonic() >= next_report:
            print(json.dumps(generator.counts(), sort_keys=True), flush=True)
            next_report += args.report_interval
    generator.stop()
    print(json.dumps(generator.counts(), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
