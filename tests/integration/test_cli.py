"""The `canary` command as a user runs it: a real process, real exit codes, real output."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import PLANS_DIR
from controller.lab import HAProxyServer, start_haproxy
from tests.integration.conftest import DemoPair

pytestmark = pytest.mark.integration


def canary(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_plan_validate_accepts_the_shipped_plans() -> None:
    for path in sorted(PLANS_DIR.glob("*.yaml")):
        result = canary("plan", "validate", str(path))
        assert result.returncode == 0, result.stderr
        assert "is valid: 6 steps, 6 stop criteria" in result.stdout


def test_plan_validate_reports_every_error_with_its_line(tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text(
        "name: x\nanalysis:\n  interval: 30\nstages:\n"
        "  - {name: c, kind: canary, weight: 10, hold: soon}\n"
        "stop_criteria: []\n"
    )
    result = canary("plan", "validate", str(plan))
    assert result.returncode == 2
    assert f"{plan}:3: analysis.interval: expected a duration" in result.stderr
    assert f"{plan}:5: stages[0].hold: 'soon' is not a duration" in result.stderr
    assert "stop_criteria" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def slots(demo_pair: DemoPair, tmp_path: Path) -> Iterator[HAProxyServer]:
    """HAProxy with the demo plan's two slots: blue (stable, 100) and green (0)."""
    server = start_haproxy(
        tmp_path,
        "checkout",
        servers={"blue": demo_pair.stable.address, "green": demo_pair.canary.address},
        weights={"blue": 100, "green": 0},
    )
    try:
        yield server
    finally:
        server.stop()


def test_start_status_abort_on_postgres(postgres_url: str, slots: HAProxyServer) -> None:
    env = {"CANARY_DATABASE_URL": postgres_url, "CANARY_HAPROXY_SOCKET": slots.socket_path}
    plan = str(PLANS_DIR / "demo.yaml")
    started = canary(
        "start",
        plan,
        "--service",
        "checkout",
        "--version",
        "2.0.0",
        "--stable",
        "1.0.0",
        env=env,
    )
    assert started.returncode == 0, started.stderr
    me = getpass.getuser()
    assert f"acting on the database as OS user {me}" in started.stderr
    rollout_id = started.stdout.strip()
    assert rollout_id.startswith("r-")

    again = canary(
        "start", plan, "--service", "checkout", "--version", "2.0.1", "--stable", "1.0.0", env=env
    )
    assert again.returncode == 1 and "already has an active rollout" in again.stderr  # refused

    listed = json.loads(canary("status", "--json", env=env).stdout)
    assert [r["id"] for r in listed] == [rollout_id]
    assert listed[0]["state"] == "pending" and listed[0]["created_by"] == me

    aborted = canary("abort", rollout_id, "--reason", "wrong build", "--json", env=env)
    assert aborted.returncode == 0, aborted.stderr
    assert json.loads(aborted.stdout) == {
        "rollout_id": rollout_id,
        "accepted": True,
        "message": json.loads(aborted.stdout)["message"],
    }
    assert "abort accepted" in json.loads(aborted.stdout)["message"]
    # Refused by the state: on stderr, exit 1; with --json, as JSON on stderr.
    refused = canary("resume", rollout_id, env=env)
    assert refused.returncode == 1 and refused.stderr.strip() and not refused.stdout.strip()
    refused = canary("pause", rollout_id, "--json", env=env)
    error = json.loads(refused.stderr.strip().splitlines()[-1])["error"]
    assert refused.returncode == 1 and error["code"] == 1 and error["kind"] == "refused"
    detail = json.loads(canary("status", rollout_id, "--json", env=env).stdout)
    assert detail["state"] == "rolling_back"
    assert detail["reason"] == f"aborted by {me}: wrong build"
    assert [e["kind"] for e in detail["events"]] == ["created", "rollback_requested"]

    human = canary("status", rollout_id, env=env)
    assert human.returncode == 0 and "rolling_back" in human.stdout

    missing = canary("status", "r-nope", env=env)
    assert missing.returncode == 3 and "no rollout 'r-nope'" in missing.stderr  # not found
    missing = canary("status", "r-nope", "--json", env=env)
    assert json.loads(missing.stderr)["error"] == {
        "code": 3,
        "kind": "not_found",
        "message": "id: no rollout 'r-nope'",
    }
    unwatchable = canary("status", "--watch", env=env)
    assert unwatchable.returncode == 2 and "--watch follows one rollout" in unwatchable.stderr


def test_start_refuses_a_router_that_is_not_as_the_store_expects(
    sqlite_url: str, slots: HAProxyServer
) -> None:
    env = {"CANARY_DATABASE_URL": sqlite_url, "CANARY_HAPROXY_SOCKET": slots.socket_path}
    slots.command("set server checkout/green weight 30")  # traffic left on the canary slot
    args = ["start", str(PLANS_DIR / "demo.yaml"), "--service", "checkout", "--version", "2.0.0"]
    refused = canary(*args, "--stable", "1.0.0", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr  # refused by state
    assert "router: the router gives 23% to green" in refused.stderr
    assert json.loads(canary("status", "--json", env=env).stdout) == []

    unreachable = canary(
        *args, "--stable", "1.0.0", env={**env, "CANARY_HAPROXY_SOCKET": "/nonexistent.sock"}
    )
    assert unreachable.returncode == 4 and "cannot read the router" in unreachable.stderr
    assert "retry once it answers" in unreachable.stderr
    assert json.loads(canary("status", "--json", env=env).stdout) == []

    forced = canary(*args, "--stable", "1.0.0", "--force", "green drained by hand", env=env)
    assert forced.returncode == 0, forced.stderr
    detail = json.loads(canary("status", forced.stdout.strip(), "--json", env=env).stdout)
    assert [e["kind"] for e in detail["events"]] == ["created", "forced_start"]

    # With a rollout of the service active, a start is refused by state (409) before
    # the router is asked: no retry could make it succeed.
    again = canary(
        *args, "--stable", "1.0.0", env={**env, "CANARY_HAPROXY_SOCKET": "/nonexistent.sock"}
    )
    assert again.returncode == 1 and "already has an active rollout" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", '1" or 1', "--stable", "1"], "version: "),
        (["--version", "2", "--stable", "2"], "is already the stable version"),
        (["--version", "2"], "stable: no stable version of checkout is known"),
    ],
)
def test_start_refuses_bad_input_with_the_field(
    sqlite_url: str, args: list[str], message: str
) -> None:
    result = canary(
        "start",
        str(PLANS_DIR / "demo.yaml"),
        "--service",
        "checkout",
        *args,
        env={"CANARY_DATABASE_URL": sqlite_url},
    )
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_settings_name_the_variable(sqlite_url: str) -> None:
    result = canary(
        "status", env={"CANARY_DATABASE_URL": sqlite_url, "CANARY_LEASE_SECONDS": "soon"}
    )
    assert result.returncode == 2
    assert "CANARY_LEASE_SECONDS" in result.stderr and "Traceback" not in result.stderr
    result = canary(
        "status",
        env={
            "CANARY_DATABASE_URL": sqlite_url,
            "CANARY_LEASE_SECONDS": "10",
            "CANARY_TASK_TIME_LIMIT_SECONDS": "20",
        },
    )
    assert result.returncode == 2 and "below CANARY_LEASE_SECONDS" in result.stderr


def test_demo_json_reports_two_releases_and_one_rollback(tmp_path: Path) -> None:
    result = canary("demo", "--json", "--workdir", str(tmp_path / "lab"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    first, second, faulty = summary["rollouts"]
    for healthy in (first, second):
        assert healthy["state"] == "succeeded" and healthy["weights"][-1] == 100
        assert healthy["tripped"] is None
    assert (first["stable_slot"], second["stable_slot"]) == ("green", "blue")
    assert faulty["state"] == "rolled_back" and faulty["weights"][-1] == 0
    assert faulty["tripped"] == "http_5xx_vs_baseline"
    assert faulty["stable_slot"] == "blue"  # production stays on 1.2.0


def test_reconcile_done_says_when_there_is_nothing_to_record(sqlite_url: str) -> None:
    env = {"CANARY_DATABASE_URL": sqlite_url}
    nothing = canary("reconcile-done", "checkout", "--note", "replayed the queue", env=env)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr
    assert "checkout has no reconciliation pending" in nothing.stderr
    bad = canary("reconcile-done", "check out", "--note", "x", env=env)
    assert bad.returncode == 2 and "service: 'check out' is not allowed" in bad.stderr


def test_version_json_plan_check_and_the_exit_code_table(tmp_path: Path) -> None:
    version = canary("--version")
    assert version.returncode == 0 and version.stdout.startswith("canary ")
    assert "Exit codes" in canary("--help").stdout
    valid = canary("plan", "validate", str(PLANS_DIR / "demo.yaml"), "--json")
    report = json.loads(valid.stdout)
    assert valid.returncode == 0 and report["valid"] and report["name"] == "demo"
    assert len(report["steps"]) == 6 and len(report["stop_criteria"]) == 6
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: []\n")
    invalid = canary("plan", "validate", str(bad), "--json")
    error = json.loads(invalid.stderr)["error"]
    assert invalid.returncode == 2 and error["kind"] == "bad_input" and not invalid.stdout
    assert any(p["path"] == "stages" for p in error["problems"])
