"""The workers' own metrics: tasks by outcome, task durations, failures, liveness.

Celery's prefork pool runs tasks in child processes, so the counters use
prometheus-client's multiprocess mode: every process writes to files in one
directory and the worker's main process serves their sum on ``--metrics-port``.
``enable_multiprocess`` must run before any metric is created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import prometheus_client.values
from celery import signals
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

_started: dict[str, float] = {}


def enable_multiprocess() -> str:
    """Point prometheus-client at a fresh directory shared by the worker's processes."""
    directory = tempfile.mkdtemp(prefix="canary-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    prometheus_client.values.ValueClass = prometheus_client.values.get_value_class()
    return directory


TASKS = Counter("canary_tasks", "Tasks finished, by task and outcome.", ["task", "outcome"])
TASK_FAILURES = Counter("canary_task_failures", "Tasks that raised or hit a time limit.", ["task"])
TASK_SECONDS = Histogram(
    "canary_task_seconds",
    "Task run time.",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ADVANCES = Counter(
    "canary_advances",
    "Advance tasks by whether they did anything (acted=false: not due, or its lease "
    "held elsewhere: work handed out for nothing).",
    ["acted"],
)
WORKER_UP = Gauge(
    "canary_worker_up",
    "1 while a worker consumes these queues.",
    ["queues"],
    multiprocess_mode="liveall",
)


def serve(port: int, queues: str) -> None:
    """Serve the summed metrics of this worker's processes (main process only)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104 - scraped remotely
    # 0 until the worker consumes: a worker still looking for its broker is no worker.
    _served["queues"] = queues
    WORKER_UP.labels(queues=queues).set(0)


_served: dict[str, str] = {}


@signals.worker_ready.connect
def _consuming(**_: Any) -> None:
    if "queues" in _served:
        WORKER_UP.labels(queues=_served["queues"]).set(1)


@signals.worker_shutting_down.connect
def _stopping(**_: Any) -> None:
    if "queues" in _served:
        WORKER_UP.labels(queues=_served["queues"]).set(0)


@signals.task_prerun.connect
def _prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    name = getattr(task, "name", "unknown")
    TASKS.labels(task=name, outcome=(state or "unknown").lower()).inc()
    started = _started.pop(task_id or "", None)
    if started is not None:
        TASK_SECONDS.labels(task=name).observe(time.perf_counter() - started)


@signals.task_failure.connect
def _failure(sender: Any = None, **_: Any) -> None:
    TASK_FAILURES.labels(task=getattr(sender, "name", "unknown")).inc()


@signals.worker_process_shutdown.connect
def _child_gone(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())


def cleanup(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
