"""Synthetic load for the staging soak, sent in bounded bursts by the advances.

No task may sleep through a soak, so the load is not one long-running loop: each
advance sends what is due since the previous one (rate × elapsed, capped), and the
totals live in the rollout's analysis state.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

MAX_BURST_SECONDS = 10.0  # never send more than this many seconds' worth at once
MAX_BURST_REQUESTS = 200  # ...nor more requests: a burst must fit inside a task
CONCURRENCY = 16


def send_burst(url: str, count: int, timeout: float = 2.0) -> tuple[int, int]:
    """GET ``url`` ``count`` times (at most MAX_BURST_REQUESTS); return (sent, failed).
    Anything but a 2xx or 3xx answer is a failure: a 404 from a wrong URL or a 401
    from a broken auth path must not pass a soak."""
    count = min(count, MAX_BURST_REQUESTS)
    if count <= 0:
        return 0, 0
    with httpx.Client(
        trust_env=False, timeout=timeout, limits=httpx.Limits(max_connections=CONCURRENCY)
    ) as client:

        def one(_: int) -> bool:
            try:
                return client.get(url).status_code < 400
            except Exception:  # refused, timed out or an unusable URL
                return False

        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            outcomes = list(pool.map(one, range(count)))
    return len(outcomes), outcomes.count(False)
