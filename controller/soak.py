"""Synthetic load for the staging soak, sent in bounded bursts by the advances.

No task may sleep through a soak, so the load is not one long-running loop: each
advance sends what is due since the previous one (rate × elapsed, capped), and the
totals live in the rollout's analysis state.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from controller import timeouts
from controller.guarded_network import guarded_transport

MAX_BURST_SECONDS = 10.0  # never send more than this many seconds' worth at once
MAX_BURST_REQUESTS = 200  # ...nor more requests: a burst must fit inside a task
CONCURRENCY = 16
REQUEST_TIMEOUT_SECONDS = 2.0
# No request of a burst starts later than this after the first: a slow endpoint makes
# the burst smaller, never the step longer than its time budget (controller.budget).
START_WITHIN_SECONDS = 4.0


def worst_case_seconds(count: int, timeout: float = REQUEST_TIMEOUT_SECONDS) -> float:
    """The longest a burst of ``count`` requests can take when every request waits its
    whole timeout: waves of CONCURRENCY requests, none starting after
    START_WITHIN_SECONDS."""
    count = min(count, MAX_BURST_REQUESTS)
    if count <= 0:
        return 0.0
    waves = math.ceil(count / CONCURRENCY)
    return min(waves * timeout, START_WITHIN_SECONDS + timeout)


def send_burst(url: str, count: int, timeout: float = REQUEST_TIMEOUT_SECONDS) -> tuple[int, int]:
    """GET ``url`` ``count`` times (at most MAX_BURST_REQUESTS); return (sent, failed).
    Anything but a 2xx or 3xx answer is a failure: a 404 from a wrong URL or a 401
    from a broken auth path must not pass a soak. Requests that would start after
    START_WITHIN_SECONDS are not sent and not counted."""
    count = min(count, MAX_BURST_REQUESTS)
    if count <= 0:
        return 0, 0
    latest_start = time.monotonic() + START_WITHIN_SECONDS
    with httpx.Client(
        trust_env=False,
        timeout=timeout,
        transport=guarded_transport(limits=httpx.Limits(max_connections=CONCURRENCY)),
    ) as client:

        def one(_: int) -> bool | None:
            if time.monotonic() > latest_start:
                return None  # the burst's time is up: not sent
            try:
                return client.get(url).status_code < 400
            except timeouts.out_of_time():
                raise  # the task's time is up: not a failed request (controller.timeouts)
            except Exception:  # refused, timed out or an unusable URL
                return False

        with timeouts.running(f"soak load burst ({count} requests)"):
            pool = ThreadPoolExecutor(max_workers=CONCURRENCY)
            try:
                outcomes = [o for o in pool.map(one, range(count)) if o is not None]
            finally:
                # Out of time mid-burst: requests not yet started are dropped at once.
                pool.shutdown(wait=True, cancel_futures=True)
    return len(outcomes), outcomes.count(False)
