"""A backend name from a variable is input: refused as such (422, exit 2), never taken
for a router that cannot be reached (503 with Retry-After, exit 4: a client retries
for ever)."""

from __future__ import annotations

import pytest

from controller.operations import OperationError, OperationUnavailable
from controller.plan import Plan
from tests.unit.test_state_machine import make_plan, start, state


def plan_with_backend_variable(default: str, pattern: str = ".*") -> dict:
    data = make_plan().model_dump(mode="json")
    data["variables"] = {"pool": default}
    data["overridable"] = {"pool": pattern}
    data["traffic"]["backend"] = "{{ pool }}"
    return data


def test_a_plan_whose_backend_variable_is_no_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"variables.pool: 'x;disable server x/blue' is used"):
        Plan.from_data(plan_with_backend_variable("x;disable server x/blue"))


def test_a_start_whose_backend_renders_to_no_name_is_bad_input(world) -> None:
    runtime, _, router, _, _ = world
    plan = Plan.from_data(plan_with_backend_variable("checkout"))
    with runtime.sessions() as session:
        from controller.operations import start_rollout

        with pytest.raises(OperationError) as refused:
            start_rollout(
                session,
                plan,
                service="api",
                version="2.0",
                stable="1.0",
                created_by="tester",
                now=runtime.clock(),
                router_for=runtime.router_for,
                variables={"pool": "x/blue"},
            )
    assert not isinstance(refused.value, OperationUnavailable)
    assert "traffic.backend: renders to 'x/blue'" in str(refused.value)
    assert router.history == []


def test_a_good_backend_variable_starts(world) -> None:
    runtime, _, _, _, _ = world
    rollout_id = start(runtime, Plan.from_data(plan_with_backend_variable("checkout")))
    assert state(runtime, rollout_id)[0].state == "pending"
