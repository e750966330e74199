"""The router carries the right version, and every canary is watched, on the real
stack: HAProxy with two slots (blue, green), Celery workers on real Redis, the store
on real PostgreSQL, Prometheus scraping the real demo service.

What users do that a single demo rollout does not: a second and a third release of
one service, a pause in the middle, an HAProxy reload, a redeploy of the stable slot.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from controller.lab.stack import RolloutLab
from controller.operations import abort_rollout, pause_rollout, resume_rollout, rollback_rollout
from controller.plan import Plan
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import session_factory
from tests.integration.rollout_helpers import (
    PLAN,
    STABLE,
    at_canary,
    begin,
    controller_lab,
    deploy,
    finished,
    snapshot,
    versions_served,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutLab]:
    """A lab with the controller's workers and beat, shared by the module. Its service
    creates error series only on the first error, like most real services."""
    with controller_lab(tmp_path_factory.mktemp("slots"), lazy_error_series=True) as lab:
        yield lab


class TrafficSampler:
    """Production requests through HAProxy in the background: when, and which version
    answered."""

    def __init__(self, url: str):
        self.url = url
        self.samples: list[tuple[datetime, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=2) as client:
            while not self._stop.is_set():
                try:
                    version = client.get(f"{self.url}/checkout").json()["version"]
                except (httpx.HTTPError, ValueError, KeyError):
                    version = "?"
                self.samples.append((datetime.now(UTC), version))
                time.sleep(0.02)

    def __enter__(self) -> TrafficSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stable_slot_in_store(lab: RolloutLab) -> str | None:
    with session_factory(lab.database_url)() as session:
        release = repository.stable_release(session, lab.settings.service)
        return release.stable_slot if release else None


def query(lab: RolloutLab, promql: str) -> list[dict]:
    assert lab.prometheus is not None
    answer = httpx.get(
        f"{lab.prometheus.url}/api/v1/query", params={"query": promql}, trust_env=False
    )
    return answer.json()["data"]["result"]


def test_the_service_has_no_error_series_before_its_first_error(lab: RolloutLab) -> None:
    """The lab reproduces what users run: traffic, but no 5xx series at all."""
    labels = f'service="checkout", version="{STABLE}", environment="production"'
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not query(lab, f"demo_http_requests_total{{{labels}}}"):
        time.sleep(0.5)
    assert query(lab, f"demo_http_requests_total{{{labels}}}")
    assert query(lab, f'demo_http_requests_total{{{labels}, code=~"5.."}}') == []
    assert query(lab, f'demo_auth_attempts_total{{{labels}, result="failure"}}') == []
    assert query(lab, f"demo_write_failures_total{{{labels}}}") == []


def test_three_releases_keep_production_on_the_newest_stable_version(lab: RolloutLab) -> None:
    releases: list[tuple[str, str, datetime | None]] = []  # version, final state, stable at
    slots = []
    with TrafficSampler(lab.haproxy.url) as sampler:  # type: ignore[union-attr]
        for fault in (None, None, {"error_rate": 0.4}):
            version = deploy(lab)
            rollout_id = begin(lab, version)
            if fault:
                wait_for(lab, rollout_id, at_canary)
                lab.set_faults("canary", **fault)
            rollout = wait_for(lab, rollout_id, finished)
            _, events = snapshot(lab, rollout_id)
            stable_at = next((e.at for e in events if e.kind == "release_stable"), None)
            releases.append((version, rollout.state, stable_at))
            slots.append(stable_slot_in_store(lab))
            weights = lab.slot_weights()
            # The slot called stable carries everything; the other one nothing.
            assert weights == {slots[-1]: 100, ({"blue", "green"} - {slots[-1]}).pop(): 0}
            assert versions_served(lab) == {releases[-1][0] if not fault else releases[1][0]}

    assert [state for _, state, _ in releases] == ["succeeded", "succeeded", "rolled_back"]
    _, events = snapshot(lab, rollout_id)
    zero = [e for e in events if e.kind == "measurement" and "counted as 0" in e.message]
    assert zero, "the absent error series were never counted as 0 errors"
    assert slots == ["green", "blue", "blue"]
    first, second, third = (version for version, _, _ in releases)
    answered = {version for _, version in sampler.samples}
    assert {STABLE, first, second} <= answered
    slack = timedelta(seconds=1)  # a request in flight when the release was marked
    for at, version in sampler.samples:
        assert version != "?", f"a production request failed at {at}"
        if at > releases[0][2] + slack:
            assert version != STABLE, f"{at}: production on {STABLE}, older than {first}"
        if at > releases[1][2] + slack:
            assert version in (second, third), f"{at}: production on {version}, not {second}"


def test_a_paused_canary_is_still_watched_and_rolled_back(lab: RolloutLab) -> None:
    version = deploy(lab)
    rollout_id = begin(lab, version)
    wait_for(lab, rollout_id, at_canary)
    with session_factory(lab.database_url)() as session:
        outcome = pause_rollout(
            session, rollout_id, reason="looking at a dashboard", actor="pytest", now=utcnow()
        )
    assert outcome.accepted, outcome.message
    paused_at = utcnow()
    lab.set_faults("canary", error_rate=0.9)
    rollout = wait_for(lab, rollout_id, finished)
    assert rollout.state == "rolled_back" and rollout.tripped_criterion == "http_5xx_vs_baseline"
    _, events = snapshot(lab, rollout_id)
    decision = next(e for e in events if e.kind == "decision" and e.at > paused_at)
    assert decision.data["decision"] == "rollback"
    assert lab.router().get_canary_weight() == 0
    assert versions_served(lab) == {rollout.stable_version}


def test_an_haproxy_reload_keeps_weights_and_a_careless_one_is_a_drift(lab: RolloutLab) -> None:
    assert lab.haproxy is not None
    version = deploy(lab)
    rollout_id = begin(lab, version)
    wait_for(lab, rollout_id, at_canary)
    try:
        weight = lab.router().get_canary_weight()
        lab.haproxy.reload(keep_state=True)  # the documented way: state file saved first
        assert lab.router().get_canary_weight() == weight

        # Weights back to the config's. Not read back here: the controller may already have
        # seen the drift and re-asserted its weight; the drift event records what it read.
        lab.haproxy.reload(keep_state=False)
        drift = wait_for(lab, rollout_id, lambda r, ev: any(e.kind == "drift" for e in ev))
        _, events = snapshot(lab, rollout_id)
        event = next(e for e in events if e.kind == "drift")
        assert event.data["actual"] == 0 and event.data["expected"] > 0
        assert event.data["policy"] == "reassert"
        wait_for(
            lab,
            rollout_id,
            lambda r, ev: any(e.kind == "weight_set" and e.data.get("reasserted") for e in ev),
        )
        assert lab.router().get_canary_weight() in (event.data["expected"], 25, 50, 100)
        assert drift.state in ("running", "blocked")
    finally:
        with session_factory(lab.database_url)() as session:
            abort_rollout(session, rollout_id, reason="test done", actor="pytest", now=utcnow())
        wait_for(lab, rollout_id, finished)
    assert lab.router().get_canary_weight() == 0


def redeploy_plan(deployer_url: str) -> Plan:
    data = PLAN.model_dump(mode="json")
    data["variables"]["deployer_url"] = deployer_url
    data["overridable"]["deployer_url"] = r"http://127\.0\.0\.1:[0-9]{1,5}"
    data["traffic"].update(
        mode="redeploy",
        redeploy={
            "http": {
                "method": "POST",
                "url": "{{ deployer_url }}/deploy"
                "?slot={{ stable_slot }}&version={{ deploy_version }}",
            }
        },
        redeploy_timeout="60s",
    )
    return Plan.from_data(data)


def test_redeploy_mode_ends_with_the_stable_slot_serving_the_new_version(lab: RolloutLab) -> None:
    """The redeployed slot answers /version at once but fails its health check for 4 s
    (a service warming up): traffic moves back only once HAProxy holds it up, so no
    user ever gets a 503."""
    plan = redeploy_plan(lab.start_deployer(warmup=4))
    stable_slot = lab.stable_slot
    version = deploy(lab)
    assert lab.haproxy is not None
    with TrafficSampler(lab.haproxy.url) as sampler:
        rollout_id = begin(lab, version, plan=plan)
        rollout = wait_for(lab, rollout_id, finished)
    answered = {answer for _, answer in sampler.samples}
    assert "?" not in answered and version in answered, answered
    assert rollout.state == "succeeded", rollout.reason
    assert lab.deployer is not None and lab.deployer.deploys == [(stable_slot, version)]
    assert lab.instances[stable_slot].version == version
    assert stable_slot_in_store(lab) == stable_slot
    assert lab.slot_weights()[stable_slot] == 100
    assert versions_served(lab) == {version}
    _, events = snapshot(lab, rollout_id)
    shifts = [e.data["weight"] for e in events if e.kind == "weight_set"]
    assert shifts[-2:] == [100, 0]  # canary to 100 %, then all back to the stable slot
    assert any(e.kind == "redeploy" and e.data["ok"] for e in events)


def test_a_rollback_after_the_redeploy_began_ends_on_the_stable_version(lab: RolloutLab) -> None:
    """The release passed every step and its version now runs in the stable slot (a
    service that warms up for 4 s); then a person rolls it back. Setting the canary
    weight to 0 would send every user to the new version, or to 503s while it warms
    up: the stable version is deployed back first, and traffic moves to the stable
    slot only once it answers that version and HAProxy holds it up."""
    plan = redeploy_plan(lab.start_deployer(warmup=4))
    stable_slot, recorded_slot = lab.stable_slot, stable_slot_in_store(lab)
    version = deploy(lab)
    assert lab.haproxy is not None and lab.deployer is not None

    def new_version_in_stable_slot(_rollout: object, events: list) -> bool:
        hooked = any(e.kind == "redeploy" and e.data["ok"] for e in events)
        return hooked and lab.instances[stable_slot].version == version

    with TrafficSampler(lab.haproxy.url) as sampler:
        rollout_id = begin(lab, version, plan=plan)
        wait_for(lab, rollout_id, new_version_in_stable_slot)
        with session_factory(lab.database_url)() as session:
            stable = repository.get_rollout(session, rollout_id).stable_version
            rollback_rollout(session, rollout_id, reason="pager fired", actor="carol", now=utcnow())
        rollout = wait_for(lab, rollout_id, finished)
        after = datetime.now(UTC)
        time.sleep(1)  # users keep coming after the rollback says it is done
    assert rollout.state == "rolled_back", rollout.reason
    assert lab.deployer.deploys[-2:] == [(stable_slot, version), (stable_slot, stable)]
    assert lab.instances[stable_slot].version == stable
    assert lab.slot_weights()[stable_slot] == 100
    assert versions_served(lab) == {stable}
    answered = {answer for _, answer in sampler.samples}
    assert "?" not in answered, "a user got an error during the rollback"
    assert {answer for at, answer in sampler.samples if at > after} == {stable}
    _, events = snapshot(lab, rollout_id)
    restored = next(e for e in events if e.kind == "redeploy" and e.data.get("rollback"))
    moved = next(e for e in events if e.kind == "weight_set" and e.data.get("rollback"))
    assert moved.at > restored.at
    assert stable_slot_in_store(lab) == recorded_slot


def test_start_wait_follows_a_release_to_its_end_in_a_log(lab: RolloutLab, tmp_path: Path) -> None:
    """`canary start --wait` as a CI job runs it: stdout is a pipe, so one line per
    change; exit 0 once the release succeeded, on the real workers and router (a
    service whose error series appear only with the first error)."""
    data = PLAN.model_dump(mode="json")
    data["gates"].pop("approvals", None)
    for stage in data["stages"]:
        stage.pop("approval", None)
    plan_file = tmp_path / "release.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    version = deploy(lab)
    with session_factory(lab.database_url)() as session:
        known = repository.stable_release(session, lab.settings.service)
    stable = known.stable_version if known else STABLE
    variables = [
        f"--var={name}={value}"
        for name, value in lab.plan_variables().items()
        if name in data["variables"]  # a deployer started by another test adds its own
    ]
    done = subprocess.run(
        [sys.executable, "-m", "controller", "start", str(plan_file)]
        + ["--service", lab.settings.service, "--version", version, "--stable", stable]
        + [*variables, "--wait", "--interval", "0.5"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **lab.env()},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) >= 3 and "\x1b" not in done.stdout  # lines, not a redrawn screen
    assert lines[-1].split()[1] == "succeeded"
    assert len(set(lines)) == len(lines)  # a line per change, no repeats
    assert versions_served(lab) == {version}


def test_the_ramp_waits_while_an_operator_holds_the_canary_in_maintenance(
    lab: RolloutLab,
) -> None:
    """An operator puts the canary's server in maintenance at 10 %: the canary gets no
    traffic, so nothing promotes it and no step raises its weight (the engine would
    also refuse a raise onto a server HAProxy holds down); the rollout pauses for a
    human at 10 %. Back in rotation and resumed, the release goes on to 100 %."""
    assert lab.haproxy is not None
    version = deploy(lab)
    rollout_id = begin(lab, version)
    wait_for(lab, rollout_id, at_canary)
    server = f"{lab.settings.service}/{lab.canary_slot}"
    assert lab.haproxy.command(f"set server {server} state maint").strip() == ""
    try:
        wait_for(lab, rollout_id, lambda r, ev: r.state == "paused")
        _, events = snapshot(lab, rollout_id)
        assert max(e.data["weight"] for e in events if e.kind == "weight_set") == 10
        assert lab.router().get_canary_weight() == 10
        assert (
            lab.router().serving("canary").problem == f"HAProxy server {server} is in maintenance"
        )
    except BaseException:
        with session_factory(lab.database_url)() as session:
            abort_rollout(session, rollout_id, reason="test failed", actor="pytest", now=utcnow())
        raise
    finally:
        assert lab.haproxy.command(f"set server {server} state ready").strip() == ""
    with session_factory(lab.database_url)() as session:
        outcome = resume_rollout(session, rollout_id, actor="pytest", now=utcnow())
    assert outcome.accepted, outcome.message
    rollout = wait_for(lab, rollout_id, finished)
    assert rollout.state == "succeeded", rollout.reason
    assert versions_served(lab) == {version}
