"""Release checklist §3.3: after a rollback for failed writes, the service's data must
be reconciled, and someone must say so, before its next rollout moves traffic."""

from __future__ import annotations

from datetime import timedelta
from textwrap import dedent

import pytest

from controller.engine import advance
from controller.metrics.prometheus import Sample
from controller.operations import OperationError, record_reconciliation
from controller.plan import Plan
from controller.plan_loader import parse_plan
from controller.rollback import rollback
from controller.runtime import Runtime
from tests.unit.test_state_machine import start, state

PLAN = dedent(
    """
    name: unit
    analysis: {interval: 5s, window: 30s}
    stages:
      - {name: canary, kind: canary, weight: 10, hold: 20s}
      - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 10s}]}
    stop_criteria:
      - {name: errors, judge: ratio_threshold, max_ratio: 0.05, min_requests: 10,
         errors: 'errors{v="{{ canary_version }}"}', total: 'total{v="{{ canary_version }}"}'}
      - {name: failed_writes, judge: zero_tolerance, failures: 'failures{v="x"}'}
    """
)


class WritesFailing:
    """Metrics where only the failed-writes criterion fails (when told to)."""

    def __init__(self) -> None:
        self.failures = 0.0
        self.errors = 0.0

    def instant(self, query: str, at=None):  # noqa: ANN001
        value = {"failures": self.failures, "errors": self.errors}.get(query.split("{")[0], 1000)
        return [Sample({}, value)]

    def range(self, *args):  # noqa: ANN002
        raise AssertionError("no range criteria")


def rolled_back_by(runtime: Runtime, plan: Plan, metrics: WritesFailing, which: str) -> str:
    rollout_id = start(runtime, plan)
    advance(runtime, rollout_id)
    if which == "failed_writes":
        metrics.failures = 3.0
    else:
        metrics.errors = 500.0
    runtime.clock.now += timedelta(seconds=5)
    advance(runtime, rollout_id)
    rollback(runtime, rollout_id)
    metrics.failures = metrics.errors = 0.0
    assert state(runtime, rollout_id)[0].tripped_criterion == which
    return rollout_id


def test_a_failed_writes_rollback_blocks_the_next_rollout_until_recorded(world) -> None:
    runtime, _, router, clock, _ = world
    metrics = WritesFailing()
    runtime.metrics = metrics
    plan = parse_plan(PLAN)
    first = rolled_back_by(runtime, plan, metrics, "failed_writes")
    _, events = state(runtime, first)
    assert any(e.kind == "reconciliation_required" for e in events)

    second = start(runtime, plan, version="2.1")
    advance(runtime, second)
    rollout, events = state(runtime, second)
    assert rollout.state == "blocked" and router.weight == 0
    assert "writes-reconciled" in rollout.reason and first in rollout.reason

    with runtime.sessions() as session:
        with pytest.raises(OperationError, match="^note: "):
            record_reconciliation(session, "api", note="  ", actor="dba", now=clock.now)
        done = record_reconciliation(
            session, "api", note="replayed 3 writes from the WAL", actor="dba", now=clock.now
        )
        assert done.accepted and done.rollout_id == first
        with pytest.raises(OperationError, match="no reconciliation pending"):
            record_reconciliation(session, "api", note="again", actor="dba", now=clock.now)
    _, events = state(runtime, first)
    audit = next(e for e in events if e.kind == "reconciliation_done")
    assert audit.actor == "dba" and "replayed 3 writes" in audit.message

    advance(runtime, second)  # due at once after the record
    rollout, _ = state(runtime, second)
    assert rollout.state == "running" and router.weight == 10


def test_a_rollback_for_another_criterion_needs_no_reconciliation(world) -> None:
    runtime, _, router, _, _ = world
    metrics = WritesFailing()
    runtime.metrics = metrics
    plan = parse_plan(PLAN)
    rolled_back_by(runtime, plan, metrics, "errors")
    second = start(runtime, plan, version="2.1")
    advance(runtime, second)
    assert state(runtime, second)[0].state == "running" and router.weight == 10
