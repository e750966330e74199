"""The chaos scenario: many rollouts while workers, Redis, PostgreSQL and Prometheus fail.

A fleet of services, each with one rollout of a canary known in advance to be
healthy or faulty, runs under two workers and a rollback worker while the
scenario SIGKILLs workers, restarts Redis (which keeps nothing: every queued
message is lost) and PostgreSQL, and stops Prometheus. Throughout, HAProxy's
weights are sampled, independently of what the controller records. At the end
the store, the event log and the samples are held against what must be true:

- lost: rollouts not in a final state;
- wrong_final_state: a healthy canary not promoted, a faulty one not rolled back,
  or a succeeded rollout whose canary slot does not carry all traffic;
- duplicate_or_out_of_order_steps: forward weights not strictly rising, a step
  completed twice, more than one rollback shift (from the event log; a drift
  re-asserted, which puts back the current step's weight after a worker died
  between moving the router and its commit, is counted apart);
- false_rolled_back: ``rolled_back`` recorded while HAProxy still gave the canary
  weight (sampled in the 2 s after, and at the end);
- max_rollback_s: from the rollback's request (a criterion tripped) to the canary
  weight sampled at 0.

``bench/chaos.py`` runs the full scenario; the test suite a short one.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from controller.lab.fleet import (
    CANARY_VERSION,
    STABLE_VERSION,
    FleetLab,
    FleetService,
    fleet_plan_data,
)
from controller.operations import start_rollout
from controller.plan import Plan
from controller.store.db import session_factory
from controller.store.models import FINAL_STATES, Event, Outbox, Rollout

WORKERS = ("rollouts-1", "rollouts-2", "rollback")
# The canary faults of the faulty services, in turn: each stop criterion trips once.
FAULTS: tuple[dict[str, float], ...] = (
    {"error_rate": 0.5},
    {"write_failure_rate": 0.3},
    {"auth_failure_rate": 0.3},
    {"queue_lag_growth": 2.0},
)


@dataclass(frozen=True)
class ChaosScenario:
    """What fails, and when (seconds from the first rollout's start)."""

    rollouts: int = 50
    faulty_every: int = 3  # every third service's canary is faulty
    start_spread_s: float = 60.0
    # Worker kills: at these times, or (when empty) every 5-20 s until the end.
    worker_kills_at: tuple[float, ...] = ()
    worker_kill_gap_s: tuple[float, float] = (5.0, 20.0)
    redis_restarts_at: tuple[float, ...] = (25.0, 75.0, 125.0)
    postgres_restarts_at: tuple[float, ...] = (100.0,)
    prometheus_down_at: float | None = 45.0
    prometheus_down_s: float = 30.0
    deadline_s: float = 900.0
    seed: int = 7

    def services(self) -> list[FleetService]:
        services = []
        for index in range(self.rollouts):
            faulty = index % self.faulty_every == self.faulty_every - 1
            faults = FAULTS[(index // self.faulty_every) % len(FAULTS)] if faulty else {}
            services.append(FleetService(f"svc-{index + 1:03d}", dict(faults)))
        return services


SHORT = ChaosScenario(
    rollouts=8,
    faulty_every=2,
    start_spread_s=4.0,
    worker_kills_at=(12.0,),
    redis_restarts_at=(18.0,),
    postgres_restarts_at=(26.0,),
    prometheus_down_at=34.0,
    prometheus_down_s=10.0,
    deadline_s=300.0,
)


def chaos_plan() -> Plan:
    """The demo plan for a fleet: no approvals or staging soak (nobody to approve,
    no staging slot), a 2 s interval and trend step (the fleet's scrape interval),
    and the standard plan's patience with a metrics outage (an error limit above a
    30 s Prometheus outage)."""
    data = fleet_plan_data(
        canary_weight=20,
        canary_hold="12s",
        min_requests=5,  # a 20 % canary of 5 requests/s
        trend_step="2s",  # the fleet is scraped every 2 s
        min_points=5,
    )
    gates = data["gates"]
    data["gates"] = {
        "recheck_interval": gates["recheck_interval"],
        "http": [g for g in gates["http"] if g["name"] == "stable-health"],
    }
    data["analysis"].update(interval="2s", window="10s", error_limit=40, inconclusive_limit=40)
    return Plan.from_data(data)


@dataclass
class ChaosReport:
    rollouts: int
    lost: int
    wrong_final_state: int
    duplicate_or_out_of_order_steps: int
    false_rolled_back: int
    max_rollback_s: float
    runbooks_not_run_once: int
    drifts_reasserted: int = 0
    rollback_seconds: list[float] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    # Processes that died without being killed (revived as a supervisor would): not a
    # lost rollout, but said, since production needs a restart policy to survive them.
    unplanned_exits: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0  # from the first start to every rollout final

    def line(self) -> str:
        return (
            f"chaos rollouts={self.rollouts} lost={self.lost} "
            f"wrong_final_state={self.wrong_final_state} "
            f"duplicate_or_out_of_order_steps={self.duplicate_or_out_of_order_steps} "
            f"false_rolled_back={self.false_rolled_back} max_rollback_s={self.max_rollback_s:.1f}"
        )

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.wrong_final_state
            or self.duplicate_or_out_of_order_steps
            or self.false_rolled_back
            or self.runbooks_not_run_once
        )


class WeightSampler:
    """Reads every service's canary weight from HAProxy every ``interval`` seconds."""

    def __init__(self, lab: FleetLab, interval: float = 0.2) -> None:
        self.lab = lab
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # A sample missed is a sample missed; keep sampling.
            with contextlib.suppress(Exception):
                self.samples.append((time.time(), self.lab.canary_weights()))
            self._stop.wait(self.interval)

    def weights_of(self, service: str, since: float, until: float) -> list[tuple[float, int]]:
        return [(t, w[service]) for t, w in self.samples if since <= t <= until and service in w]


def run_chaos(
    lab: FleetLab, scenario: ChaosScenario, say: Callable[[str], None] = print
) -> ChaosReport:
    """Run the scenario on a started fleet lab (workers are started here) and judge it."""
    rng = random.Random(scenario.seed)
    plan = chaos_plan()
    lab.start_worker("rollouts-1", "rollouts,runbook,notify", concurrency=2)
    lab.start_worker("rollouts-2", "rollouts,runbook,notify", concurrency=2)
    lab.start_worker("rollback", "rollback,reconcile", concurrency=2)
    lab.start_beat()
    sampler = WeightSampler(lab)
    sampler.start()
    actions: list[str] = []
    began = time.monotonic()

    def log(what: str) -> None:
        line = f"[{time.monotonic() - began:6.1f}s] {what}"
        actions.append(line)
        say(line)

    services = list(lab.services)
    victims = _victims(rng)
    schedule = _schedule(scenario, services, rng, victims)
    rollout_ids: dict[str, str] = {}
    report_exits: list[str] = []
    while time.monotonic() - began < scenario.deadline_s:
        now = time.monotonic() - began
        while schedule and schedule[0][0] <= now:
            _, what, target = schedule.pop(0)
            if what == "start":
                rollout_ids[target] = _start(lab, plan, target)
            else:
                log(_act(lab, what, target, scenario))
                if what == "kill" and not scenario.worker_kills_at and not _all_final(lab):
                    gap = rng.uniform(*scenario.worker_kill_gap_s)
                    schedule.append((now + gap, "kill", next(victims)))
                    schedule.sort(key=lambda item: item[0])
        for revived in lab.revive_exited():
            report_exits.append(revived)
            log(revived)
        pending_faults = any(what not in ("start", "kill") for _, what, _ in schedule)
        if len(rollout_ids) == len(services) and not pending_faults and _all_final(lab):
            break
        time.sleep(0.2)
    settled = time.monotonic() - began
    log("all rollouts final" if _all_final(lab) else "deadline reached")
    _wait_for_runbooks(lab, timeout=240)
    sampler.stop()
    report = judge(lab, rollout_ids, sampler)
    report.actions, report.duration_s = actions, settled
    report.unplanned_exits = report_exits
    return report


def _victims(rng: random.Random) -> Iterator[str]:
    """Workers to kill: every one in turn, in a new random order each round."""
    while True:
        order = list(WORKERS)
        rng.shuffle(order)
        yield from order


def _schedule(
    scenario: ChaosScenario, services: list[str], rng: random.Random, victims: Iterator[str]
) -> list[tuple[float, str, str]]:
    gap = scenario.start_spread_s / max(len(services) - 1, 1)
    items = [(index * gap, "start", name) for index, name in enumerate(services)]
    items += [(at, "redis", "") for at in scenario.redis_restarts_at]
    items += [(at, "postgres", "") for at in scenario.postgres_restarts_at]
    if scenario.prometheus_down_at is not None:
        items.append((scenario.prometheus_down_at, "prometheus_down", ""))
        items.append(
            (scenario.prometheus_down_at + scenario.prometheus_down_s, "prometheus_up", "")
        )
    kills = scenario.worker_kills_at or (rng.uniform(*scenario.worker_kill_gap_s),)
    items += [(at, "kill", next(victims)) for at in kills]
    return sorted(items, key=lambda item: item[0])


def _act(lab: FleetLab, what: str, target: str, scenario: ChaosScenario) -> str:
    started = time.monotonic()
    if what == "kill":
        lab.restart_worker(target)
        done = f"SIGKILL worker {target}, restarted"
    elif what == "redis":
        assert lab.redis is not None
        lab.redis.restart()
        done = "Redis restarted (nothing persisted: every queued message lost)"
    elif what == "postgres":
        assert lab.postgres is not None
        lab.postgres.restart()
        done = "PostgreSQL restarted (fast shutdown: every session cut)"
    elif what == "prometheus_down":
        assert lab.prometheus is not None
        lab.prometheus.stop()
        done = f"Prometheus stopped (for {scenario.prometheus_down_s:.0f}s)"
    else:
        assert lab.prometheus is not None
        lab.prometheus.start_again()
        done = "Prometheus started again"
    return f"{done} ({time.monotonic() - started:.1f}s)"


def _start(lab: FleetLab, plan: Plan, service: str, attempts: int = 60) -> str:
    """Start one rollout as an SRE's CLI would, retrying while the store restarts."""
    for attempt in range(attempts):
        try:
            with session_factory(lab.database_url)() as session:
                return start_rollout(
                    session,
                    plan,
                    service=service,
                    version=CANARY_VERSION,
                    stable=STABLE_VERSION,
                    created_by="chaos",
                    now=datetime.now(UTC),
                    router_for=lab.router_for,
                    variables=lab.plan_variables(service),
                ).id
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _rollouts(lab: FleetLab) -> list[Rollout]:
    with session_factory(lab.database_url)() as session:
        return list(session.scalars(select(Rollout)))


def _all_final(lab: FleetLab) -> bool:
    try:
        rollouts = _rollouts(lab)
    except Exception:  # the store is restarting: not known to be final
        return False
    return len(rollouts) == len(lab.services) and all(r.state in FINAL_STATES for r in rollouts)


def _wait_for_runbooks(lab: FleetLab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with session_factory(lab.database_url)() as session:
                pending = session.scalars(
                    select(Outbox.id).where(Outbox.kind == "runbook", Outbox.done_at.is_(None))
                ).first()
            if pending is None:
                return
        except Exception:
            pass
        time.sleep(0.5)


def judge(lab: FleetLab, rollout_ids: dict[str, str], sampler: WeightSampler) -> ChaosReport:
    """Hold the store, the event log and HAProxy's samples against what must be true."""
    final_weights = lab.canary_weights()
    with session_factory(lab.database_url)() as session:
        rollouts = {r.service: r for r in session.scalars(select(Rollout))}
        events: dict[str, list[Event]] = {}
        for event in session.scalars(select(Event).order_by(Event.id)):
            events.setdefault(event.rollout_id, []).append(event)
    report = ChaosReport(len(lab.services), 0, 0, 0, 0, 0.0, 0)
    for name, service in lab.services.items():
        rollout = rollouts.get(name)
        if rollout is None or rollout.id != rollout_ids.get(name):
            report.lost += 1
            report.problems.append(f"{name}: no rollout recorded")
            continue
        history = events.get(rollout.id, [])
        if rollout.state not in FINAL_STATES:
            report.lost += 1
            report.problems.append(f"{name}: still {rollout.state}: {rollout.reason}")
            continue
        expected = "rolled_back" if service.faulty else "succeeded"
        if rollout.state != expected or (
            expected == "succeeded" and final_weights.get(name, 0) == 0
        ):
            report.wrong_final_state += 1
            report.problems.append(
                f"{name}: {rollout.state}, expected {expected} (canary weight "
                f"{final_weights.get(name)}): {rollout.reason}"
            )
        report.drifts_reasserted += len(
            [e for e in history if e.kind == "weight_set" and e.data.get("reasserted")]
        )
        wrong_steps = step_violations(history)
        if wrong_steps:
            report.duplicate_or_out_of_order_steps += len(wrong_steps)
            report.problems += [f"{name}: {problem}" for problem in wrong_steps]
        if rollout.state == "rolled_back":
            _judge_rollback(report, name, history, sampler, final_weights.get(name, 0))
    report.max_rollback_s = max(report.rollback_seconds, default=0.0)
    return report


def _judge_rollback(
    report: ChaosReport,
    name: str,
    history: list[Event],
    sampler: WeightSampler,
    final_weight: int,
) -> None:
    requested = next((e for e in history if e.kind == "rollback_requested"), None)
    settled = next((e for e in history if e.kind == "rolled_back"), None)
    if settled is not None:
        at = settled.at.timestamp()
        carried = [w for _, w in sampler.weights_of(name, at + 0.05, at + 2.0) if w > 0]
        if carried or final_weight > 0:
            report.false_rolled_back += 1
            report.problems.append(
                f"{name}: rolled_back recorded while the canary had weight "
                f"{carried[:1] or final_weight}"
            )
    if requested is not None:
        asked = requested.at.timestamp()
        zero = next((t for t, w in sampler.weights_of(name, asked, float("inf")) if w == 0), None)
        if zero is None:
            report.problems.append(f"{name}: canary weight never sampled at 0 after rollback")
            report.rollback_seconds.append(float("inf"))
        else:
            report.rollback_seconds.append(max(zero - asked, 0.0))
    runbooks = len([e for e in history if e.kind == "runbook" and e.data.get("step") == 5])
    if runbooks != 1:
        report.runbooks_not_run_once += 1
        report.problems.append(f"{name}: the runbook's last step ran {runbooks} time(s)")


def step_violations(history: list[Event]) -> list[str]:
    """Steps done twice or out of order in one rollout's event log."""
    problems: list[str] = []
    shifts = [e for e in history if e.kind == "weight_set"]
    # A drift re-asserted puts back the weight of the step the rollout is in (a
    # worker killed after moving the router, before its commit): not a step.
    forward = [
        int(e.data["weight"])
        for e in shifts
        if not e.data.get("rollback") and not e.data.get("reasserted")
    ]
    for before, after in zip(forward, forward[1:], strict=False):
        if after <= before:
            problems.append(f"weight {after} set after {before}")
    rollback_shifts = len([e for e in shifts if e.data.get("rollback")])
    if rollback_shifts > 1:
        problems.append(f"{rollback_shifts} rollback shifts recorded")
    completed = [e.step_index for e in history if e.kind == "step_completed"]
    for before, after in zip(completed, completed[1:], strict=False):
        if after <= before:
            problems.append(f"step {after} completed after step {before}")
    return problems


def summary(report: ChaosReport) -> dict[str, Any]:
    """The report as JSON-able figures (for ``--json``)."""
    times = sorted(t for t in report.rollback_seconds if t != float("inf"))
    return {
        "rollouts": report.rollouts,
        "lost": report.lost,
        "wrong_final_state": report.wrong_final_state,
        "duplicate_or_out_of_order_steps": report.duplicate_or_out_of_order_steps,
        "false_rolled_back": report.false_rolled_back,
        "max_rollback_s": report.max_rollback_s,
        "median_rollback_s": times[len(times) // 2] if times else None,
        "runbooks_not_run_once": report.runbooks_not_run_once,
        "drifts_reasserted": report.drifts_reasserted,
        "duration_s": round(report.duration_s, 1),
        "unplanned_exits": report.unplanned_exits,
        "problems": report.problems,
    }
