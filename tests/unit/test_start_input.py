"""What a start may change, and where the workers may send requests: overridable
variables with their patterns, and the URL host policy (SSRF)."""

from __future__ import annotations

import pytest

from controller.operations import OperationError, start_rollout
from controller.plan import Plan
from controller.store import repository
from controller.url_policy import HostPolicy, parse_allowed_hosts, url_problems
from tests.unit.test_state_machine import make_plan


def plan_with_hook(url: str = "{{ hook_url }}") -> Plan:
    data = make_plan().model_dump(mode="json")
    data["variables"] = {"hook_url": "http://deploy.internal:8080", "team": "core"}
    data["overridable"] = {"team": "[a-z]{1,20}"}
    data["runbook"] = {"disable_canary": {"http": {"method": "POST", "url": url + "/off"}}}
    return Plan.from_data(data)


def begin(runtime, plan: Plan, policy: HostPolicy | None = None, **variables: str) -> str:  # type: ignore[no-untyped-def]
    with runtime.sessions() as session:
        return start_rollout(
            session,
            plan,
            service="api",
            version="2.0",
            stable="1.0",
            created_by="tester",
            now=runtime.clock(),
            router_for=runtime.router_for,
            variables=variables,
            url_policy=policy,
        ).id


def no_rollouts(runtime) -> bool:  # type: ignore[no-untyped-def]
    with runtime.sessions() as session:
        return repository.list_rollouts(session, active_only=False, service=None, limit=5) == []


def test_only_overridable_variables_change_at_start_and_only_to_their_pattern(world) -> None:
    runtime = world[0]
    with pytest.raises(OperationError, match="variables.hook_url: plan .* does not let a start"):
        begin(runtime, plan_with_hook(), hook_url="http://169.254.169.254")
    with pytest.raises(OperationError, match="variables.team: 'Core!' does not match"):
        begin(runtime, plan_with_hook(), team="Core!")
    with pytest.raises(OperationError, match="variables.nope: the plan does not declare it"):
        begin(runtime, plan_with_hook(), nope="x")
    assert no_rollouts(runtime)
    assert begin(runtime, plan_with_hook(), team="payments")


def test_overridable_names_declared_variables_and_compiles() -> None:
    data = plan_with_hook().model_dump(mode="json")
    with pytest.raises(ValueError, match="overridable: ghost not among the plan's variables"):
        Plan.from_data({**data, "overridable": {"ghost": "x"}})
    with pytest.raises(ValueError, match="team: not a regular expression"):
        Plan.from_data({**data, "overridable": {"team": "(["}})


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]:80",
        "http://metadata.google.internal/computeMetadata",
    ],
)
def test_metadata_addresses_are_refused_even_without_an_allow_list(world, url: str) -> None:
    runtime = world[0]
    with pytest.raises(OperationError, match=r"runbook.disable_canary.http.url: host .*: refused"):
        begin(runtime, plan_with_hook(url))
    assert no_rollouts(runtime)


def test_an_allow_list_limits_every_url_the_rollout_would_call() -> None:
    policy = HostPolicy(parse_allowed_hosts("*.internal, 10.0.0.0/8, 127.0.0.1"))
    values = {"hook_url": "http://deploy.internal:8080", "service": "api", "window": "1m"}
    assert url_problems(plan_with_hook(), values, policy) == []
    outside = {**values, "hook_url": "http://example.com"}
    assert url_problems(plan_with_hook(), outside, policy) == [
        "runbook.disable_canary.http.url: host example.com is not among the allowed hosts "
        "(*.internal, 10.0.0.0/8, 127.0.0.1)"
    ]
    assert policy.problem("http://10.1.2.3:8080/x") is None
    assert policy.problem("http://11.1.2.3/x") is not None
    assert policy.problem("file:///etc/passwd") == "'file:///etc/passwd' is not an http(s) URL"


def test_a_malformed_allow_list_entry_is_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not a network"):
        parse_allowed_hosts("10.0.0.0/33")
    with pytest.raises(ValueError, match="'a b' is not a host name"):
        parse_allowed_hosts("ok.internal, a b")
