"""Threads a check waits on: its stop criteria's queries and the slots' versions.

A check is mostly waiting (Prometheus, the slots' version endpoints); asked one
after another it would cost the sum of those waits, and with Prometheus slow the
sum of their timeouts. These threads let one check wait on all of them at once.
They are kept between checks (starting a pool of threads for every check was a
measurable part of a check's CPU) and are per process: a forked pool process of a
Celery worker starts its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# One check at a time per process (prefork) asks at most a plan's criteria and two
# slots at once; twice that leaves room for the queries a check that ran out of
# time left running (each ends at its own timeout).
THREADS = 16

_pools: dict[int, ThreadPoolExecutor] = {}
_guard = threading.Lock()


def in_background(work: Callable[..., T], *args: object) -> Future[T]:
    """Run ``work(*args)`` on this process's threads. The caller waits on the future,
    so a task's time limit still strikes in the caller's own thread."""
    return _pool().submit(work, *args)


def _pool() -> ThreadPoolExecutor:
    pid = os.getpid()
    with _guard:
        pool = _pools.get(pid)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="check")
            _pools[pid] = pool
        return pool
