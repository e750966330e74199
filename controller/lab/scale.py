"""The scale scenario: many concurrent rollouts, each to be checked on the plan's clock.

A fleet of healthy services (``SyntheticFleetLab`` by default, ``FleetLab`` for real
demo service instances), one rollout each, held at a 10 % canary
for an hour with a 10 s analysis interval, under the default worker layout: two
``rollouts`` workers of concurrency 2, one worker for ``rollback`` and
``reconcile``, one for runbooks and notifications, beat and the API. Once every
rollout carries canary traffic the store is watched for a window with every
rollout's queries asked on their own, then, the ``rollouts`` workers restarted with
batched queries (the default), for a second window; these are measured (all but
one from the second window):

- checks_per_min: checks (advances that measured) per rollout per minute;
- lag_p50_s / lag_p99_s: check start minus the time it was due (``next_check_at``,
  sampled from the store every 0.25 s: each value lasts a whole interval);
- noop_advances: advance tasks that did nothing (not due, lease held elsewhere),
  by the workers' ``canary_advances_total{acted="false"}``;
- prom_queries_per_round: queries Prometheus answered per round (one check of
  every rollout);
- per_rollout_queries_per_round: the same with every rollout's queries asked on
  their own (batching off), measured in a first window of the same run;
- worker_rss_mb: resident memory of all worker processes and their children;
- redis_keys: keys in the broker's Redis;
- metrics_scrape_ms: the median of five ``GET /metrics`` on the API.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from config.settings import Settings
from controller.lab.controllers import LabSettings
from controller.lab.fleet import (
    CANARY_VERSION,
    STABLE_VERSION,
    FleetLab,
    FleetService,
    SyntheticFleetLab,
    fleet_plan_data,
)
from controller.operations import OperationError, start_rollout
from controller.plan import Plan
from controller.store.db import session_factory
from controller.store.models import Event, Rollout

INTERVAL_S = 10.0
DEFAULT_RECONCILE_S = Settings.model_fields["reconcile_interval_seconds"].default


def scale_plan() -> Plan:
    """The demo plan for a fleet held at its canary: no gates, approvals or soak, a
    10 s interval over a 40 s window, a canary held for an hour."""
    data = fleet_plan_data(
        canary_weight=10, canary_hold="1h", min_requests=1, trend_step="10s", min_points=4
    )
    data["gates"] = {"recheck_interval": "10s"}
    data["analysis"].update(interval=f"{INTERVAL_S:g}s", window="40s")
    return Plan.from_data(data)


@dataclass
class ScaleFigures:
    rollouts: int
    checks_per_min: float
    lag_p50_s: float
    lag_p99_s: float
    noop_advances: int
    prom_queries_per_round: float
    per_rollout_queries_per_round: float
    worker_rss_mb: float
    redis_keys: int
    metrics_scrape_ms: float

    def line(self) -> str:
        return "scale " + " ".join(
            f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in asdict(self).items()
        )


def check_lags(checks: dict[str, list[datetime]], dues: dict[str, set[datetime]]) -> list[float]:
    """Seconds from due to start of each check: its due time is the latest
    ``next_check_at`` seen for the rollout at or before the check began."""
    lags = []
    for rollout_id, starts in checks.items():
        seen = sorted(dues.get(rollout_id, ()))
        for began in starts:
            index = bisect_right(seen, began) - 1
            if index >= 0:
                lags.append((began - seen[index]).total_seconds())
    return lags


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class DueSampler:
    """Samples every rollout's ``next_check_at`` from the store in a thread."""

    def __init__(self, database_url: str, every: float = 0.25) -> None:
        self.sessions = session_factory(database_url)
        self.every = every
        self.dues: dict[str, set[datetime]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with self.sessions() as session:
                for rollout_id, due in session.execute(select(Rollout.id, Rollout.next_check_at)):
                    self.dues[rollout_id].add(due)


def idle_advances(lab: FleetLab) -> float:
    """Advance tasks that did nothing so far (``canary_advances_total{acted="false"}``),
    by every worker's own counter."""
    total = 0.0
    for address in lab.worker_metrics.values():
        text = httpx.get(f"http://{address}/metrics", trust_env=False, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "canary_advances_total" and sample.labels.get("acted") == "false":
                    total += sample.value
    return total


def prometheus_queries(url: str) -> float:
    """Instant and range queries Prometheus has answered since it started."""
    text = httpx.get(f"{url}/metrics", trust_env=False, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "prometheus_http_requests_total" and sample.labels.get("handler") in (
                "/api/v1/query",
                "/api/v1/query_range",
            ):
                total += sample.value
    return total


def _descendants(pids: list[int]) -> set[int]:
    """``pids`` and all their descendants (Celery's pool children), from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    seen, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def tree_rss_mb(pids: list[int]) -> float:
    """Resident memory of ``pids`` and all their descendants, from /proc."""
    kib = 0
    for pid in _descendants(pids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return kib / 1024


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) ``pids`` and their living descendants have used."""
    ticks = 0
    for pid in _descendants(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    """What one measured window of the fleet showed."""

    checks: dict[str, list[datetime]]
    lags: list[float]
    rounds: float
    queries: float
    idle_advances: float
    worker_cpu_s: float


def measure_window(lab: FleetLab, rollouts: int, window_s: float) -> Window:
    """Watch the store and the counters for ``window_s`` seconds of steady state."""
    sessions = session_factory(lab.database_url)
    sampler = DueSampler(lab.database_url)
    sampler.start()
    time.sleep(INTERVAL_S)  # every rollout's current due time sampled
    workers = [lab.workers[name].pid for name in lab.worker_metrics]
    idle_before, queries_before = idle_advances(lab), prometheus_queries(lab.prometheus.url)
    cpu_before = tree_cpu_seconds(workers)
    began = datetime.now(UTC)
    time.sleep(window_s)
    ended = datetime.now(UTC)
    cpu_after = tree_cpu_seconds(workers)
    idle_after, queries_after = idle_advances(lab), prometheus_queries(lab.prometheus.url)
    sampler.stop()
    with sessions() as session:
        written = session.execute(
            select(Event.rollout_id, Event.at, Event.kind).where(
                Event.at >= began, Event.at < ended
            )
        ).all()
    checks: dict[str, list[datetime]] = defaultdict(list)
    for rollout_id, at in sorted({(r, a) for r, a, kind in written if kind == "measurement"}):
        checks[rollout_id].append(at)
    checked = sum(len(starts) for starts in checks.values())
    return Window(
        checks=checks,
        lags=check_lags(checks, sampler.dues),
        rounds=checked / rollouts if rollouts else 0.0,
        queries=queries_after - queries_before,
        idle_advances=idle_after - idle_before,
        worker_cpu_s=cpu_after - cpu_before,
    )


def settle(lab: FleetLab, say: Callable[[str], None], within_s: float = 90.0) -> None:
    """Wait until the checks missed while the workers restarted are caught up: no
    rollout more than 2 s overdue (or ``within_s`` passed, and say so)."""
    sessions = session_factory(lab.database_url)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        overdue_before = datetime.now(UTC) - timedelta(seconds=2)
        with sessions() as session:
            overdue = session.scalar(
                select(func.count()).where(Rollout.next_check_at < overdue_before)
            )
        if not overdue:
            return
        time.sleep(1)
    say(f"{overdue} rollout(s) still overdue after {within_s:g} s; measuring anyway")


def start_rollout_workers(
    lab: FleetLab, suffix: str, env: dict[str, str], concurrency: int = 2
) -> list[str]:
    """Two ``rollouts`` workers, of concurrency 2 in the default layout (a fleet of
    hundreds keeps the machine busy: they may take minutes to start)."""
    names = [f"rollouts-{index}{suffix}" for index in (1, 2)]
    for name in names:
        lab.start_worker(name, "rollouts", concurrency=concurrency, env=env, ready_within=300.0)
    return names


FLEETS: dict[str, type[FleetLab]] = {"synthetic": SyntheticFleetLab, "demo": FleetLab}


def run_scale(
    workdir: Path,
    rollouts: int,
    window_s: float = 60.0,
    say: Callable[[str], None] = print,
    fleet: str = "synthetic",
    concurrency: int = 2,
) -> ScaleFigures:
    """Two windows in one run, on one fleet: first with the default batched queries,
    then, with the ``rollouts`` workers restarted, with every rollout's queries asked
    on their own (``CANARY_QUERY_BATCH_SLOT_SECONDS=0``). Every figure but
    ``per_rollout_queries_per_round`` is the first window's: the default path is
    measured the way it runs, not draining the backlog the per-rollout path leaves
    at a thousand rollouts (it checks each rollout about twice a minute). ``fleet``: the
    services, ``synthetic`` (thin, for hundreds to thousands) or ``demo`` (real demo
    service instances, saturating this machine near 300). ``concurrency``: pool
    processes of each of the two ``rollouts`` workers (2 in the default layout)."""
    plan = scale_plan()
    services = [FleetService(f"svc-{index:04d}") for index in range(rollouts)]
    settings = LabSettings(reconcile_interval_seconds=DEFAULT_RECONCILE_S)
    lab_class = FLEETS[fleet]
    with lab_class(workdir, services, settings, rps_per_service=1.0, scrape_interval="5s") as lab:
        batching = start_rollout_workers(lab, "", {}, concurrency)
        lab.start_worker("rollback", "rollback,reconcile", concurrency=2, ready_within=300.0)
        lab.start_worker("aftercare", "runbook,notify", concurrency=1, ready_within=300.0)
        lab.start_beat(ready_within=300.0)
        api = lab.start_api(ready_within=300.0)
        sessions = session_factory(lab.database_url)
        for name in lab.services:
            _start(lab, plan, name)
        say(f"{rollouts} rollouts started; waiting for every canary to take traffic")
        deadline = time.monotonic() + max(120.0, rollouts * 0.5)
        while time.monotonic() < deadline:
            with sessions() as session:
                at_canary = (
                    session.scalar(
                        select(Rollout.id).where(Rollout.weight.is_distinct_from(10)).limit(1)
                    )
                    is None
                )
            if at_canary:
                break
            time.sleep(1)
        if not at_canary:
            say("not every canary took traffic; measuring anyway")
        settle(lab, say)
        batched = measure_window(lab, rollouts, window_s)
        scrapes = []
        for _ in range(5):
            began_scrape = time.perf_counter()
            httpx.get(f"{api}/metrics", trust_env=False, timeout=30)
            scrapes.append((time.perf_counter() - began_scrape) * 1000)
        assert lab.redis is not None
        keys = redis.Redis.from_url(lab.redis.url).dbsize()
        workers = [lab.workers[name].pid for name in lab.worker_metrics]
        rss_mb = round(tree_rss_mb(workers), 1)
        say(
            f"batched: checks_per_min={_per_min(batched, rollouts, window_s):g} "
            f"lag_p99_s={percentile(batched.lags, 0.99):.2f}; "
            "restarting the rollouts workers asking each rollout's queries on their own"
        )
        for name in batching:
            lab.stop_worker(name)
        start_rollout_workers(
            lab, "-per-rollout", {"CANARY_QUERY_BATCH_SLOT_SECONDS": "0"}, concurrency
        )
        settle(lab, say)
        alone = measure_window(lab, rollouts, window_s)
        say(
            f"per-rollout queries: checks_per_min={_per_min(alone, rollouts, window_s):g} "
            f"lag_p99_s={percentile(alone.lags, 0.99):.2f}"
        )
        say(capacity_line(alone, batched))
        lags = batched.lags
        return ScaleFigures(
            rollouts=rollouts,
            checks_per_min=_per_min(batched, rollouts, window_s),
            lag_p50_s=round(statistics.median(lags), 2) if lags else float("nan"),
            lag_p99_s=round(percentile(lags, 0.99), 2),
            noop_advances=round(batched.idle_advances),
            prom_queries_per_round=_per_round(batched),
            per_rollout_queries_per_round=_per_round(alone),
            worker_rss_mb=rss_mb,
            redis_keys=int(keys),
            metrics_scrape_ms=round(statistics.median(scrapes), 1),
        )


def capacity_line(alone: Window, batched: Window) -> str:
    """Worker CPU per check on each path, and what 10,000 rollouts at the scale plan's
    interval would need in worker cores at the batched path's cost (a simulation from
    this run's figure: checks are independent, and Celery spreads them over hosts)."""

    def per_check_ms(window: Window) -> float:
        checked = sum(len(starts) for starts in window.checks.values())
        return window.worker_cpu_s / checked * 1000 if checked else float("nan")

    batched_ms = per_check_ms(batched)
    cores = 10_000 / INTERVAL_S * batched_ms / 1000
    return (
        f"capacity worker_cpu_ms_per_check={batched_ms:.1f} "
        f"per_rollout_worker_cpu_ms_per_check={per_check_ms(alone):.1f} "
        f"simulated_worker_cores_for_10000={cores:.0f}"
    )


def _per_min(window: Window, rollouts: int, window_s: float) -> float:
    checked = sum(len(starts) for starts in window.checks.values())
    return round(checked / rollouts / (window_s / 60), 2) if rollouts else float("nan")


def _per_round(window: Window) -> float:
    return round(window.queries / window.rounds, 1) if window.rounds else float("nan")


def _start(lab: FleetLab, plan: Plan, service: str, attempts: int = 10) -> None:
    """Start one rollout as the CLI would; a router too busy to answer the start's
    read-back in time (hundreds of services starting at once) is asked again."""
    for attempt in range(attempts):
        try:
            with session_factory(lab.database_url)() as session:
                start_rollout(
                    session,
                    plan,
                    service=service,
                    version=CANARY_VERSION,
                    stable=STABLE_VERSION,
                    created_by="bench",
                    now=datetime.now(UTC),
                    router_for=lab.router_for,
                    variables=lab.plan_variables(service),
                )
            return
        except OperationError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
