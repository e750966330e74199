"""``canary demo``: the whole project on one machine, in under three minutes.

It starts the lab (Redis if none answers, Prometheus, HAProxy with two slots, blue
and green, the demo service in each, synthetic load, Celery workers and beat), then
runs three releases of ``config/plans/demo.yaml`` the way an SRE would, through the
store, and watches them from the store like on-call would:

1. ``1.1.0`` into green, healthy: soak, canary, ramp to 100 %, verify ->
   ``succeeded``; green is now the stable slot;
2. ``1.2.0`` into blue, healthy -> ``succeeded``; blue is stable again;
3. ``1.3.0`` into green, which starts answering 5xx once it takes production
   traffic -> ``rolled_back`` by the 5xx-against-baseline criterion; blue stays.

After each it prints the slot that carries production traffic, read from HAProxy.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from config import PLANS_DIR
from config.settings import get_settings
from controller.lab.stack import LabSettings, RolloutLab
from controller.operations import approve_rollout, start_rollout
from controller.plan_loader import load_plan
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import migrate, session_factory
from controller.store.models import FINAL_STATES, ROLLBACK_STATES, Event, Rollout
from controller.stored_plans import plan_of
from controller.views import weights_of

DEMO_PLAN = PLANS_DIR / "demo.yaml"
# (state, slot carrying production afterwards) of each release, when all is well.
EXPECTED = [("succeeded", "green"), ("succeeded", "blue"), ("rolled_back", "blue")]
ROLLOUT_TIMEOUT_SECONDS = 100
SHOWN_EVENTS = {
    "blocked",
    "gates_passed",
    "unblocked",
    "smoke",
    "verification",
    "release_stable",
    "started",
    "weight_set",
    "step_completed",
    "decision",
    "rollback_requested",
    "router_error",
    "rollback_failed",
    "stable_unavailable",
}


class RolloutWatcher:
    """Follows one rollout in the store and prints what on-call would want to see."""

    def __init__(self, lab: RolloutLab, rollout_id: str, console: Console):
        self.sessions = session_factory(lab.database_url)
        self.rollout_id = rollout_id
        self.console = console
        self.seen = 0
        self.approved: set[tuple[str, str]] = set()

    def poll(self) -> tuple[Rollout, list[Event]]:
        with self.sessions() as session:
            rollout = repository.get_rollout(session, self.rollout_id)
            events = list(repository.events_for(session, self.rollout_id))
        assert rollout is not None
        fresh = events[self.seen :]
        self.seen = len(events)
        for event in fresh:
            if event.kind in SHOWN_EVENTS:
                self.console.print(
                    f"  {event.at:%H:%M:%S} [{rollout.canary_version}] "
                    f"{event.kind}: {event.message}",
                    markup=False,
                )
            elif event.kind == "measurement" and event.data.get("verdict") == "fail":
                self.console.print(
                    f"  {event.at:%H:%M:%S} [{rollout.canary_version}] FAIL {event.message}",
                    markup=False,
                )
        return rollout, fresh

    def wait(
        self,
        until: Callable[[Rollout, list[Event]], bool],
        timeout: float = ROLLOUT_TIMEOUT_SECONDS,
    ) -> Rollout:
        deadline = time.monotonic() + timeout
        while True:
            rollout, fresh = self.poll()
            if until(rollout, fresh) or time.monotonic() > deadline:
                return rollout
            if rollout.state == "blocked" and "approval" in (rollout.reason or ""):
                self.approve_as_owners(rollout)
            time.sleep(0.25)

    def approve_as_owners(self, rollout: Rollout) -> None:
        """The demo's owners approve whatever the rollout waits for, as people would."""
        plan = plan_of(rollout)
        for role, people in plan.owners.items():
            if role in (rollout.reason or "") and (rollout.id, role) not in self.approved:
                with self.sessions() as session:
                    outcome = approve_rollout(
                        session, rollout.id, name=people[0], role=role, now=utcnow()
                    )
                self.approved.add((rollout.id, role))
                self.console.print(f"  approval: {outcome.message}", markup=False)


def _finished(rollout: Rollout, _events: list[Event]) -> bool:
    return rollout.state in FINAL_STATES


def _canary_traffic_started(rollout: Rollout, events: list[Event]) -> bool:
    return rollout.state in (*ROLLBACK_STATES, *FINAL_STATES) or any(
        e.kind == "weight_set" and e.data.get("kind") == "canary" for e in events
    )


def run_demo(workdir: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; return ``{"rollouts": [...]}`` with each rollout's outcome."""
    console = console or Console()
    plan = load_plan(DEMO_PLAN)
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="canary-demo-"))
    settings = LabSettings(
        service="checkout",
        stable_version="1.0.0",
        canary_version="1.1.0",
        redis_db=redis_db_of(get_settings().broker_url),
    )
    started = time.monotonic()
    console.print(f"[bold]canary demo[/]: starting the lab in {base}")
    with RolloutLab(base, settings) as lab:
        migrate(lab.database_url)
        lab.start_controller()
        assert lab.prometheus and lab.haproxy
        console.print(
            f"  prometheus {lab.prometheus.url}  haproxy {lab.haproxy.url}  "
            f"redis {lab.redis.url if lab.redis else '-'}  "
            f"database {lab.database_url}",
            markup=False,
        )
        sessions = session_factory(lab.database_url)
        results = []

        def run(version: str, stable: str, fault: dict[str, float] | None) -> None:
            lab.deploy_canary(version)
            console.print(
                f"\n  deployed {version} to the idle slot {lab.canary_slot} (and staging); "
                f"{lab.stable_slot} serves {stable}",
                markup=False,
            )
            with sessions() as session:
                rollout = start_rollout(
                    session,
                    plan,
                    service=settings.service,
                    version=version,
                    stable=stable,
                    created_by="canary-demo",
                    now=utcnow(),
                    router_for=lab.router_for,
                    variables=lab.plan_variables(),
                )
            console.print(
                f"\n[bold]rollout {rollout.id}[/]: {settings.service} {version} "
                f"(stable {stable})"
                + (f", fault {fault} once it takes traffic" if fault else ", healthy")
            )
            watcher = RolloutWatcher(lab, rollout.id, console)
            if fault:
                watcher.wait(_canary_traffic_started)
                lab.set_faults("canary", **fault)
                console.print(f"  injected {fault} into {version}", markup=False)
            final = watcher.wait(_finished)
            with sessions() as session:
                weights = weights_of(session, final.id)
            serving = production_slot(lab)
            console.print(
                f"  production traffic: slot {serving} "
                f"({lab.instances[serving].version}) at 100%, read from HAProxy",
                markup=False,
            )
            results.append(
                {
                    "id": final.id,
                    "version": version,
                    "state": final.state,
                    "weights": weights,
                    "tripped": final.tripped_criterion,
                    "stable_slot": serving,
                    "reason": final.reason,
                }
            )

        stable = settings.stable_version
        for version, fault in (("1.1.0", None), ("1.2.0", None), ("1.3.0", {"error_rate": 0.3})):
            run(version, stable, fault)
            if results[-1]["state"] == "succeeded":
                stable = version
        console.print("\n  stopping the lab")
    _print_summary(console, results, time.monotonic() - started)
    return {
        "rollouts": [
            {k: r[k] for k in ("id", "version", "state", "weights", "tripped", "stable_slot")}
            for r in results
        ]
    }


def production_slot(lab: RolloutLab) -> str:
    """The slot HAProxy gives all production traffic to ("blue+green" if split)."""
    weights = lab.slot_weights()
    serving = [slot for slot, weight in weights.items() if weight > 0]
    return serving[0] if len(serving) == 1 else "+".join(sorted(serving))


def _print_summary(console: Console, results: list[dict[str, Any]], seconds: float) -> None:
    table = Table(
        "rollout",
        "version",
        "state",
        "weights",
        "tripped",
        "production slot",
        title=f"canary demo: {len(results)} rollouts in {seconds:.0f}s",
    )
    for r in results:
        weights = " -> ".join(f"{w}%" for w in r["weights"])
        table.add_row(
            r["id"], r["version"], r["state"], weights, r["tripped"] or "-", r["stable_slot"]
        )
    console.print(table)
    for r in results:
        console.print(f"{r['id']} {r['state']}: {r['reason']}", markup=False)


def redis_db_of(url: str) -> int:
    """The database number of a ``redis://host:port/N`` URL (0 when it has none)."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0
