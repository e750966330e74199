"""Shared steps of the end-to-end rollout tests: deploy a version, start a rollout,
watch it in the store, and check what real traffic through HAProxy reaches."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from config import PLANS_DIR
from controller.lab.errors import MissingBinaryError
from controller.lab.stack import LabSettings, RolloutLab
from controller.operations import approve_rollout, start_rollout
from controller.plan import Plan
from controller.plan_loader import load_plan
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import migrate, session_factory
from controller.store.models import FINAL_STATES, Event, Rollout
from tests.conftest import postgres_schema

PLAN = load_plan(PLANS_DIR / "demo.yaml")
STABLE = "1.0.0"
_versions = itertools.count(1)


def start_lab(workdir: Path, database_url: str, **overrides: object) -> RolloutLab:
    settings = LabSettings(
        database_url=database_url, stable_version=STABLE, canary_version="0.9.0", **overrides
    )
    try:
        lab = RolloutLab(workdir, settings).start()
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    migrate(database_url)
    return lab


@contextmanager
def controller_lab(workdir: Path, **overrides: object) -> Iterator[RolloutLab]:
    """A lab on a PostgreSQL schema of its own with the controller's workers and beat
    running; stopped, and the schema dropped, on leaving."""
    with postgres_schema() as url:
        lab = start_lab(workdir, url, **overrides)
        try:
            lab.start_controller()
            yield lab
        finally:
            lab.stop()


def deploy(lab: RolloutLab) -> str:
    """A new canary version in staging and in the canary slot, faults off."""
    version = f"2.0.{next(_versions)}"
    lab.deploy_canary(version)
    lab.router().set_canary_weight(0)
    return version


def begin(lab: RolloutLab, version: str, plan: Plan = PLAN, approve: bool = True) -> str:
    """Start a rollout from the stable release the store records (the lab's first
    version before any succeeded); unless told otherwise, its owners approve every
    gate up front."""
    with session_factory(lab.database_url)() as session:
        known = repository.stable_release(session, lab.settings.service)
        rollout_id = start_rollout(
            session,
            plan,
            service=lab.settings.service,
            version=version,
            stable=None if known else STABLE,
            created_by="pytest",
            now=utcnow(),
            router_for=lab.router_for,
            # Only what the plan declares: a deployer another test started adds its own.
            variables={k: v for k, v in lab.plan_variables().items() if k in plan.variables},
        ).id
        if approve:
            approve_all(session, plan, rollout_id)
    return rollout_id


def approve_all(session: Session, plan: Plan, rollout_id: str) -> None:
    gates = {"preflight": [g.role for g in plan.gates.approvals]}
    gates |= {stage.name: list(stage.approval) for stage in plan.stages if stage.approval}
    for gate, roles in gates.items():
        for role in roles:
            approve_rollout(
                session, rollout_id, name=plan.owners[role][0], role=role, gate=gate, now=utcnow()
            )


def snapshot(lab: RolloutLab, rollout_id: str) -> tuple[Rollout, list[Event]]:
    with session_factory(lab.database_url)() as session:
        rollout = repository.get_rollout(session, rollout_id)
        return rollout, list(repository.events_for(session, rollout_id))


def wait_for(
    lab: RolloutLab,
    rollout_id: str,
    condition: Callable[[Rollout, list[Event]], bool],
    timeout: float = 90,
) -> Rollout:
    deadline = time.monotonic() + timeout
    while True:
        rollout, events = snapshot(lab, rollout_id)
        if condition(rollout, events):
            return rollout
        if time.monotonic() > deadline:
            kinds = [f"{e.kind}: {e.message}" for e in events[-8:]]
            raise AssertionError(f"rollout {rollout_id} stuck in {rollout.state}: {kinds}")
        time.sleep(0.2)


def finished(rollout: Rollout, _events: list[Event]) -> bool:
    return rollout.state in FINAL_STATES


def at_canary(rollout: Rollout, events: list[Event]) -> bool:
    return any(e.kind == "weight_set" and e.data.get("kind") == "canary" for e in events)


def versions_served(lab: RolloutLab, requests: int = 60) -> set[str]:
    """Which versions answer real requests through HAProxy right now."""
    assert lab.haproxy is not None
    seen = set()
    with httpx.Client(trust_env=False, timeout=5) as client:
        for _ in range(requests):
            seen.add(client.get(f"{lab.haproxy.url}/checkout").json()["version"])
    return seen


def assert_no_step_done_twice(events: list[Event]) -> None:
    """Forward weights strictly rise, each step completes once, at most one rollback shift."""
    shifts = [e for e in events if e.kind == "weight_set"]
    forward = [e.data["weight"] for e in shifts if not e.data.get("rollback")]
    assert forward == sorted(set(forward)), forward
    assert len([e for e in shifts if e.data.get("rollback")]) <= 1
    completed = [e.step_index for e in events if e.kind == "step_completed"]
    assert len(completed) == len(set(completed)), completed
