"""A rollback that can never succeed, ended by a person (``canary resolve``), on the
real stack: HAProxy, PostgreSQL, Redis, the Celery workers and beat, the API, and
the ``canary`` command as on-call run it.

A config push renames the service's HAProxy backend while its canary takes 10 %:
the rollout's plan still names the old backend, so the rollback worker retries for
ever (``rollback_failed``) and no rollout of the service can start. On-call fix the
traffic by hand over the runtime API, and end the rollout: the controller cannot
read the plan's backend, so an operator is refused with what it read, and only an
admin's ``--force`` ends it, recorded as NOT confirmed. The service then ships again
with its plan naming the new backend.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from config import PLANS_DIR
from controller.lab.stack import RolloutLab
from controller.plan import Plan
from tests.integration.rollout_helpers import (
    PLAN,
    STABLE,
    at_canary,
    begin,
    controller_lab,
    deploy,
    snapshot,
    versions_served,
    wait_for,
)

pytestmark = pytest.mark.integration

OPERATOR, ADMIN = "operator-token-0123456789", "admin-token-0123456789ab"
RENAMED = "checkout_v2"


def canary(api_url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``canary`` as on-call run it: through the API, as the token's identity."""
    env = {**os.environ, "CANARY_API_URL": api_url, "CANARY_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def push_config_renaming_the_backend(lab: RolloutLab) -> None:
    """What a careless config push does: the service's backend gets a new name, its
    servers keep the weights they had (canary 10 %), and HAProxy is reloaded."""
    assert lab.haproxy is not None
    text = lab.haproxy.config_path.read_text()
    backend = lab.settings.service
    pushed = text.replace(f"backend {backend}\n", f"backend {RENAMED}\n").replace(
        f"default_backend {backend}\n", f"default_backend {RENAMED}\n"
    )
    pushed = re.sub(r"(server blue \S+ weight )\d+", r"\g<1>90", pushed)
    pushed = re.sub(r"(server green \S+ weight )\d+", r"\g<1>10", pushed)
    assert pushed.count(RENAMED) == 2, pushed
    lab.haproxy.config_path.write_text(pushed)
    lab.haproxy.reload(keep_state=False)


def renamed_plan() -> Plan:
    """The demo plan, corrected to name the backend HAProxy has now."""
    data = PLAN.model_dump(mode="json")
    data["traffic"]["backend"] = RENAMED
    return Plan.from_data(data)


def test_a_rollback_that_cannot_reach_its_backend_is_ended_by_hand_and_the_service_ships(
    tmp_path: Path,
) -> None:
    tokens = f"olga:operator:{OPERATOR},ada:admin:{ADMIN}"
    with controller_lab(tmp_path) as lab:
        api = lab.start_api(overrides={"CANARY_API_TOKENS": tokens})
        version = deploy(lab)
        rollout_id = begin(lab, version)
        wait_for(lab, rollout_id, at_canary)
        push_config_renaming_the_backend(lab)
        assert versions_served(lab, 200) == {STABLE, version}  # the canary still serves

        asked = canary(api, OPERATOR, "rollback", rollout_id, "--reason", "p99 doubled")
        assert asked.returncode == 0, asked.stderr
        rollout = wait_for(lab, rollout_id, lambda r, _e: r.state == "rollback_failed")
        hint = f"fix traffic by hand, then `canary resolve {rollout_id} --reason ...`"
        _, events = snapshot(lab, rollout_id)
        failure = next(e for e in events if e.kind == "rollback_failed")
        assert "No such backend" in failure.message and failure.message.endswith(hint)

        # The service is blocked, and everything a person looks at says what to do.
        blocked = canary(
            api,
            ADMIN,
            "start",
            str(PLANS_DIR / "demo.yaml"),
            "--service",
            lab.settings.service,
            "--version",
            "9.9.9",
            "--stable",
            STABLE,
        )
        assert blocked.returncode == 1, blocked.stderr
        assert f"{rollout_id} is rollback_failed: {hint}" in blocked.stderr
        status = canary(api, OPERATOR, "status", rollout_id, "--json")
        assert (
            json.loads(status.stdout)["action_needed"] == f"{rollout_id} is rollback_failed: {hint}"
        )

        # On-call put every user on stable by hand, on the backend HAProxy has now.
        assert lab.haproxy is not None
        assert lab.haproxy.command(f"set server {RENAMED}/green weight 0").strip() == ""
        assert lab.haproxy.command(f"set server {RENAMED}/blue weight 100").strip() == ""
        assert versions_served(lab) == {STABLE}

        refused = canary(api, OPERATOR, "resolve", rollout_id, "--reason", "green drained")
        assert refused.returncode == 1, refused.stderr
        assert "traffic is not confirmed on stable: cannot read the router" in refused.stderr
        assert "No such backend" in refused.stderr
        not_allowed = canary(
            api, OPERATOR, "resolve", rollout_id, "--reason", "green drained", "--force"
        )
        assert not_allowed.returncode == 5 and "needs admin" in not_allowed.stderr
        assert snapshot(lab, rollout_id)[0].state == "rollback_failed"

        reason = f"green drained by hand on {RENAMED}; the plan names the old backend"
        forced = canary(api, ADMIN, "resolve", rollout_id, "--reason", reason, "--force")
        assert forced.returncode == 0, forced.stderr
        assert "aborted, recorded with traffic NOT confirmed on stable" in forced.stdout
        rollout, events = snapshot(lab, rollout_id)
        assert rollout.state == "aborted" and rollout.weight is None
        resolved = next(e for e in events if e.kind == "resolved")
        assert resolved.actor == "ada" and resolved.data["reason"] == reason
        assert resolved.data["forced"] and not resolved.data["traffic_confirmed"]
        assert "No such backend" in resolved.data["router"]["error"]
        assert not any(e.kind == "weight_set" and e.data.get("rollback") for e in events)

        # A new rollout of the service starts, from the router state the store expects.
        again = begin(lab, version, plan=renamed_plan())
        wait_for(lab, again, at_canary)
        assert versions_served(lab, 200) == {STABLE, version}
        assert snapshot(lab, rollout_id)[0].state == "aborted"  # no retry rewrote it
