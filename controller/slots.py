"""The two slots of a service (HAProxy servers) and which one carries the stable release.

A succeeded rollout must leave the router where the slot called stable serves the
new version at 100 %. In ``swap`` mode the slots alternate: the one that ended at
100 % becomes stable, and the store remembers it per service. In ``redeploy`` mode
the roles stay, and the new version is deployed into the stable slot before traffic
moves back to it. Either way a rollout starts only from the router state the store
expects, so the next soak can never put production on an older version.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from controller import timeouts
from controller.background import in_background
from controller.http_client import request_within, shared_client
from controller.plan import HAPROXY_NAME, Plan, SlotMode, VersionCheck, render_template
from controller.store.models import Release, Rollout
from controller.traffic.base import RouterError, TrafficRouter


@dataclass(frozen=True)
class Slots:
    stable: str
    canary: str


def slots_for_new_rollout(plan: Plan, release: Release | None) -> Slots:
    """The slots of a rollout about to start: in swap mode the stable one is the slot
    the store recorded for the service (if it is one of this plan's servers)."""
    traffic = plan.traffic
    stable = traffic.stable_server
    if (
        traffic.mode == SlotMode.SWAP
        and release is not None
        and release.stable_slot in (traffic.stable_server, traffic.canary_server)
    ):
        stable = release.stable_slot
    return Slots(stable=stable, canary=traffic.other_slot(stable))


def slots_of(plan: Plan, rollout: Rollout) -> Slots:
    """The slots a rollout was started with (the plan's, for rollouts older than slots)."""
    stable = rollout.stable_slot or plan.traffic.stable_server
    return Slots(stable=stable, canary=rollout.canary_slot or plan.traffic.other_slot(stable))


def template_values(
    plan: Plan,
    *,
    service: str,
    canary_version: str,
    stable_version: str,
    slots: Slots,
    overrides: dict[str, str] | None,
    environment: str = "production",
) -> dict[str, str]:
    """Every template value of a rollout: the built-ins (with its slots) and the
    plan's variables with the rollout's overrides."""
    builtins = {
        "service": service,
        "canary_version": canary_version,
        "stable_version": stable_version,
        "environment": environment,
        "stable_slot": slots.stable,
        "canary_slot": slots.canary,
        "deploy_version": canary_version,
    }
    return plan.template_values(builtins, overrides)


def rollout_values(plan: Plan, rollout: Rollout, environment: str = "production") -> dict[str, str]:
    """Every template value of a stored rollout (see ``template_values``)."""
    return template_values(
        plan,
        service=rollout.service,
        canary_version=rollout.canary_version,
        stable_version=rollout.stable_version,
        slots=slots_of(plan, rollout),
        overrides=rollout.variables,
        environment=environment,
    )


def slot_after_success(plan: Plan, slots: Slots) -> str:
    """The slot that is stable once a rollout succeeded."""
    return slots.canary if plan.traffic.mode == SlotMode.SWAP else slots.stable


def router_names_problem(plan: Plan, values: dict[str, str]) -> str | None:
    """Why the rendered backend name cannot be a HAProxy backend, or None. A variable
    may put anything into ``traffic.backend`` (``x;disable server x/blue``): that is
    bad input, refused before the router is asked, never "router unavailable"."""
    backend = render_template(plan.traffic.backend, values)
    if HAPROXY_NAME.fullmatch(backend):
        return None
    return (
        f"traffic.backend: renders to {backend!r}, which is not a HAProxy backend name "
        "(letters, digits, _ . : - only); check the variables it uses"
    )


def router_state_problem(router: TrafficRouter, slots: Slots) -> str | None:
    """Why the router is not in the state a new rollout needs (the stable slot carries
    everything, the canary slot nothing); None when it is.

    Raises:
        RouterError: the router cannot be read: that is no state at all.
    """
    weight = router.get_canary_weight()
    if weight != 0:
        return (
            f"the router gives {weight}% to {slots.canary}, the slot the new version goes "
            f"into; the store expects {slots.stable} (stable) at 100% and {slots.canary} at 0%"
        )
    return None


def served_version(base_url: str, check: VersionCheck) -> str:
    """Ask one slot which version it serves.

    Raises:
        RouterError: the slot did not answer with a version.
    """
    url = base_url.rstrip("/") + check.path
    try:
        response = request_within(shared_client(), "GET", url, check.timeout.total_seconds())
        response.raise_for_status()
        value = response.json()[check.field]
    except timeouts.out_of_time():
        raise  # the task's time is up: no answer about the slot (controller.timeouts)
    except Exception as exc:  # unreachable, not JSON, no such field: no version known
        raise RouterError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    return str(value)


def version_mismatches(plan: Plan, values: dict[str, str], expected: dict[str, str]) -> list[str]:
    """Each slot (by role: ``stable``/``canary``) that does not serve the version
    expected of it; empty when the plan has no version check."""
    return ask_versions(plan, values, expected).problems()


@dataclass
class VersionAnswers:
    """The slots' versions being asked, all at once (``ask_versions``): a check
    waits for the slower slot, not for each in turn, and can measure meanwhile."""

    asked: dict[str, tuple[str | None, str]]  # role -> (slot, expected version)
    answers: dict[str, Future[tuple[str | None, str | None]]]

    def problems(self) -> list[str]:
        """Wait for every slot's answer; what is wrong with each, if anything."""
        problems = []
        try:
            for role, (slot, version) in self.asked.items():
                serving, problem = self.answers[role].result()
                if problem is not None:
                    problems.append(f"{role} slot {slot}: no version: {problem}")
                elif serving != version:
                    problems.append(f"{role} slot {slot} serves {serving}, expected {version}")
        finally:
            self.cancel()  # out of time: never wait for the other slot
        return problems

    def cancel(self) -> None:
        """Drop the asks not started yet; those running end at their own timeout."""
        for answer in self.answers.values():
            answer.cancel()


def ask_versions(plan: Plan, values: dict[str, str], expected: dict[str, str]) -> VersionAnswers:
    """Start asking each slot with a URL its version (none without a version check)."""
    check = plan.traffic.version_check
    asked: dict[str, tuple[str | None, str]] = {}
    answers = {}
    for role, version in expected.items():
        url = values.get(f"{role}_url")
        if check is None or url is None:
            continue
        asked[role] = (values.get(f"{role}_slot"), version)
        answers[role] = in_background(_served_or_problem, url, check)
    return VersionAnswers(asked, answers)


def _served_or_problem(url: str, check: VersionCheck) -> tuple[str | None, str | None]:
    try:
        return served_version(url, check), None
    except RouterError as exc:
        return None, str(exc)
