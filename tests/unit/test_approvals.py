"""Separation of duties: whoever starts a rollout does not approve it, and one person
approves in one role per rollout, however many roles they hold."""

from __future__ import annotations

import pytest

from controller.operations import OperationError, approve_rollout
from controller.plan import Plan
from tests.unit.test_state_machine import make_plan, start, state


def gated_plan() -> Plan:
    """Preflight needs a release manager and an SRE; erin holds both roles, and the
    rollout's starter ("tester") is a release manager too."""
    data = make_plan().model_dump(mode="json")
    data["owners"] = {
        "release_manager": ["tester", "erin", "alice"],
        "sre_oncall": ["erin", "carol"],
    }
    data["gates"] = {
        "approvals": [{"role": "release_manager"}, {"role": "sre_oncall"}],
        "recheck_interval": "10s",
    }
    return Plan.from_data(data)


def approve(runtime, rollout_id: str, name: str, role: str | None = None):  # type: ignore[no-untyped-def]
    with runtime.sessions() as session:
        return approve_rollout(
            session, rollout_id, name=name, role=role, gate="preflight", now=runtime.clock()
        )


def approvals(runtime, rollout_id: str) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    _, events = state(runtime, rollout_id)
    return [(e.data["name"], e.data["role"], e.data["via"]) for e in events if e.kind == "approval"]


def test_the_starter_cannot_approve_their_own_rollout(world) -> None:
    runtime = world[0]
    rollout_id = start(runtime, gated_plan())
    with pytest.raises(OperationError, match="tester started this rollout and cannot also"):
        approve(runtime, rollout_id, "tester")
    assert approvals(runtime, rollout_id) == []


def test_two_roles_held_by_one_person_are_approved_by_two_people(world) -> None:
    runtime = world[0]
    rollout_id = start(runtime, gated_plan())
    with pytest.raises(OperationError, match="erin is an owner of release_manager, sre_oncall"):
        approve(runtime, rollout_id, "erin")
    assert approvals(runtime, rollout_id) == []  # nothing recorded by a refused call
    assert approve(runtime, rollout_id, "erin", role="sre_oncall").accepted
    with pytest.raises(OperationError, match="erin approved this rollout as sre_oncall already"):
        approve(runtime, rollout_id, "erin", role="release_manager")
    assert approve(runtime, rollout_id, "alice").accepted
    assert approvals(runtime, rollout_id) == [
        ("erin", "sre_oncall", "api token"),
        ("alice", "release_manager", "api token"),
    ]


def test_approving_again_records_nothing_more(world) -> None:
    """A retried call or an impatient second click is the same approval, not two
    lines in the audit trail."""
    runtime = world[0]
    rollout_id = start(runtime, gated_plan())
    assert approve(runtime, rollout_id, "erin", role="sre_oncall").accepted
    again = approve(runtime, rollout_id, "erin")  # her role is known from the first
    assert again.accepted and again.message == "erin approved preflight as sre_oncall already"
    assert approvals(runtime, rollout_id) == [("erin", "sre_oncall", "api token")]


def test_the_engine_counts_a_person_once_whatever_the_store_holds() -> None:
    """Two approvals by one name in two roles (as a race could write before the row
    lock) satisfy one role, never the two-person gate."""
    from controller.checks import missing_approvals

    plan = gated_plan()
    roles = ["release_manager", "sre_oncall"]
    by_erin = [
        {"gate": "preflight", "role": "sre_oncall", "name": "erin"},
        {"gate": "preflight", "role": "release_manager", "name": "erin"},
    ]
    assert missing_approvals(plan, roles, by_erin, "preflight") == ["release_manager"]
    with_alice = [*by_erin, {"gate": "preflight", "role": "release_manager", "name": "alice"}]
    assert missing_approvals(plan, roles, with_alice, "preflight") == []


def test_a_stage_may_be_approved_before_the_rollout_reaches_it(world) -> None:
    """Decided and kept (SECURITY.md, "Approvals"): owners may sign a stage off at
    the go/no-go, as release meetings do. The approval is recorded at once, with the
    step the rollout was at, and counts when the stage is due; it never moves traffic
    by itself nor skips a check, and the stage's stop criteria still judge it."""
    from controller.checks import missing_approvals

    runtime = world[0]
    data = gated_plan().model_dump(mode="json")
    data["stages"][1]["approval"] = ["sre_oncall"]  # the ramp
    plan = Plan.from_data(data)
    rollout_id = start(runtime, plan)
    with runtime.sessions() as session:
        early = approve_rollout(
            session, rollout_id, name="carol", role="sre_oncall", gate="ramp", now=runtime.clock()
        )
    assert early.accepted and early.message == "carol approved ramp as sre_oncall"
    _, events = state(runtime, rollout_id)
    [given] = [e for e in events if e.kind == "approval"]
    assert (given.data["gate"], given.step_index) == ("ramp", 0)
    assert missing_approvals(plan, ["sre_oncall"], [given.data], "ramp") == []
    assert missing_approvals(plan, ["sre_oncall"], [given.data], "preflight") == ["sre_oncall"]
