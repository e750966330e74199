"""Threads a check waits on (its stop criteria's queries and the slots' versions),
threads that run the checks of one batch side by side, and work waited for no
longer than its budget (``within``: each step of the rollback runbook).

A check is mostly waiting (Prometheus, the slots' version endpoints); asked one
after another it would cost the sum of those waits, and with Prometheus slow the
sum of their timeouts. These threads let one check wait on all of them at once.
They are kept between checks (starting a pool of threads for every check was a
measurable part of a check's CPU) and are per process: a forked pool process of a
Celery worker starts its own.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# A few checks at a time per process (``controller.due_batches``), each asking at
# most a plan's criteria and two slots at once; room too for the queries a check
# that ran out of time left running (each ends at its own timeout). The checks'
# threads are a pool of their own: a check waiting on its queries never holds a
# thread its queries need.
THREADS = 32
CHECK_THREADS = 1
# Shared answers fetched ahead of the checks that will need them
# (``controller.analysis.batching``): a pool of their own, so that checks waiting on
# such a fetch can never hold every thread it would need to run. Every distinct
# batched query of a slot is fetched at once, each mostly waiting (for Prometheus,
# or for the process that asks it), so as many as the checks' query threads.
FETCH_THREADS = 32

_pools: dict[tuple[int, str], ThreadPoolExecutor] = {}
_guard = threading.Lock()


def in_background(work: Callable[..., T], *args: object) -> Future[T]:
    """Run ``work(*args)`` on this process's threads. The caller waits on the future,
    so a task's time limit still strikes in the caller's own thread."""
    return _pool("query", THREADS).submit(work, *args)


def fetch_ahead(work: Callable[..., T], *args: object) -> Future[T]:
    """Run ``work(*args)``, a fetch other threads may be waiting for."""
    return _pool("fetch", FETCH_THREADS).submit(work, *args)


def alongside(work: Callable[..., T], *args: object) -> Future[T]:
    """Run a whole check, ``work(*args)``, beside the one the caller runs."""
    return _pool("check", CHECK_THREADS).submit(work, *args)


def _pool(kind: str, size: int) -> ThreadPoolExecutor:
    key = (os.getpid(), kind)
    with _guard:
        pool = _pools.get(key)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=kind)
            _pools[key] = pool
        return pool


class Overrun(Exception):
    """Work that gave no result within the time it was given; it was left running."""


def within(seconds: float, work: Callable[[], T], name: str = "bounded") -> T:
    """``work()``'s result, or ``Overrun`` once ``seconds`` passed without one.

    A thread cannot be stopped: work that overruns is left to end on its own, on a
    daemon thread, by the timeouts of its own (an HTTP call's, a command's); this
    only stops the caller waiting for it. What ``work`` raises, the caller gets. The
    caller waits in its own thread, so a task's time limit still strikes there, and
    the work runs with the caller's context variables (its log fields)."""
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome.append((False, exc))
        finally:
            done.set()

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name=name, daemon=True).start()
    if not done.wait(seconds):
        raise Overrun(f"no result within {seconds:g}s")
    finished, value = outcome[0]
    if not finished:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]
