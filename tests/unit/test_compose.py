"""docker-compose.yml is a complete system: every container has a healthcheck and a
restart policy, waits for what it needs to be healthy, and every controller
container runs a real `canary` command with settings the controller reads.

(No Docker engine runs here, so the file is checked, not started: the commands run
as processes in tests/integration/test_compose_processes.py, and docker-compose
itself validates the file in tests/unit/test_deploy_tools.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main
import yaml

from config import PLANS_DIR
from config.settings import Settings
from controller.cli import app
from controller.plan_loader import load_plan
from tasks.app import QUEUES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OUR_IMAGE = "canary-controller:latest"
# The image's ENTRYPOINT: the console script pip installs next to the interpreter.
CANARY = Path(sys.executable).parent / "canary"
# Services that run once and exit; the others wait for them to complete.
ONE_SHOT = {"migrate"}


def our_containers() -> dict[str, list[str]]:
    """Every container of the controller image (controller and demo), with its command."""
    return {
        name: spec["command"]
        for name, spec in SERVICES.items()
        if spec.get("image") == OUR_IMAGE or spec.get("build")
    }


def controller_services() -> dict[str, dict[str, Any]]:
    """The controller's own processes: the services built from the Dockerfile."""
    return {name: spec for name, spec in SERVICES.items() if spec.get("build")}


def resolve(command: list[str]) -> tuple[Any, list[str]]:
    """Walk the CLI's command tree along the argv; return the command and the rest.

    Typer ships its own copy of click, so groups are recognised by their
    ``commands`` mapping rather than by class."""
    node = typer.main.get_command(app)
    rest = list(command)
    while hasattr(node, "commands") and rest and rest[0] in node.commands:
        node = node.commands[rest.pop(0)]
    return node, rest


def subcommand(command: list[str]) -> list[str]:
    """The subcommand path of an argv (``["db", "upgrade"]``, ``["worker"]``)."""
    node, rest = resolve(command)
    return command[: len(command) - len(rest)]


def test_compose_has_the_parts_of_the_design() -> None:
    assert {
        "redis",
        "postgres",
        "prometheus",
        "alertmanager",
        "haproxy",
        "api",
        "worker",
        "rollback-worker",
        "reconcile-worker",
        "runbook-worker",
        "notify-worker",
        "beat",
        "flower",
        "demo-blue",
        "demo-green",
        "demo-staging",
        "demo-load",
        "migrate",
    } <= set(SERVICES)


def test_every_controller_command_exists_with_its_options() -> None:
    containers = our_containers()
    assert len(containers) >= 12
    for name, command in containers.items():
        node, rest = resolve(command)
        assert not hasattr(node, "commands"), f"{name}: {command} names no command"
        known = {opt for param in node.params for opt in getattr(param, "opts", [])}
        options = [arg for arg in rest if arg.startswith("--")]
        unknown = [opt for opt in options if opt.split("=")[0] not in known]
        assert not unknown, f"{name}: unknown options {unknown} for {command}"
        ctx = node.make_context(f"canary {name}", list(rest), resilient_parsing=False)
        assert ctx is not None


def test_every_command_answers_help_as_a_process() -> None:
    """The image's entrypoint is `canary`: each distinct subcommand, run for real."""
    assert CANARY.is_file(), f"{CANARY} missing: pip install -e '.[test]'"
    paths = {tuple(subcommand(command)) for command in our_containers().values()}
    assert {("api",), ("worker",), ("beat",), ("flower",), ("db", "upgrade")} <= paths
    for path in sorted(paths):
        result = subprocess.run(
            [str(CANARY), *path, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        )
        assert result.returncode == 0, (path, result.stderr[-500:])
        assert f"Usage: canary {' '.join(path)}" in result.stdout, path


def test_our_image_is_built_here_and_never_pulled() -> None:
    for name, spec in SERVICES.items():
        if spec.get("image") == OUR_IMAGE and not spec.get("build"):
            assert spec.get("pull_policy") == "never", name
    assert all(spec["build"] == "." for spec in controller_services().values())


def test_every_queue_has_a_worker_of_its_own() -> None:
    queues = {
        name: cmd[cmd.index("--queues") + 1]
        for name, cmd in our_containers().items()
        if cmd[0] == "worker"
    }
    assert sorted(queues.values()) == sorted(QUEUES)


def test_every_service_has_a_healthcheck_and_a_restart_policy() -> None:
    for name, spec in SERVICES.items():
        check = spec.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        if name in ONE_SHOT:
            assert spec["restart"] == "on-failure", name
            # Its image's HEALTHCHECK would judge a job by a server's probe.
            assert check == {"disable": True}, name
            continue
        assert spec.get("restart") == "unless-stopped", name
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)
        assert re.fullmatch(r"\d+s", check["interval"]) and check["retries"] >= 1, name


def test_dependencies_wait_for_health_or_completion() -> None:
    for name, spec in SERVICES.items():
        depends = spec.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for other, condition in depends.items():
            expected = "service_completed_successfully" if other in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, (name, other, condition)
    # What the controller cannot start without.
    for name in controller_services().keys() - ONE_SHOT - {"flower"}:
        assert {"migrate", "redis", "haproxy"} <= set(SERVICES[name]["depends_on"]), name
    assert "postgres" in SERVICES["migrate"]["depends_on"]


def test_healthchecks_probe_what_each_container_serves() -> None:
    """Controller containers use the image's probe on the port their command serves."""
    for name, command in our_containers().items():
        if name in ONE_SHOT:
            continue
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[1:4] == ["python", "-m", "controller.probe"], (name, test)
        probe = test[4]
        if command[0] == "worker":
            port = command[command.index("--metrics-port") + 1]
            assert test[4:] == ["worker", "--port", port], name
        elif command[0] == "beat":
            schedule = command[command.index("--schedule") + 1]
            assert test[4:] == ["beat", "--schedule", schedule], name
        elif command[0] == "demo-load":
            target = command[command.index("--target") + 1].rsplit("=", 1)[0]
            assert test[4:] == ["http", target.replace("/checkout", "/healthz")], name
        else:
            assert probe == "http", name
            port = command[command.index("--port") + 1]
            assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/[a-z]+", test[5]), (name, test)


def test_controller_environment_is_settings_the_controller_reads() -> None:
    """Every variable is a Settings field (CANARY_ + field name), or a notification URL
    that a shipped plan names with url_env; a typo would be silently ignored."""
    prefix = Settings.model_config.get("env_prefix", "")
    fields = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    url_envs = {
        target.url_env
        for path in PLANS_DIR.glob("*.yaml")
        for target in load_plan(path).notifications
        if target.url_env
    }
    for name, spec in controller_services().items():
        unknown = set(spec["environment"]) - fields - url_envs
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"
    # The compose plan's notifications reach the worker that sends them, and the
    # runbook's incident webhook the worker that runs it; nobody else holds them.
    compose_plan = {t.url_env for t in load_plan(PLANS_DIR / "compose.yaml").notifications}
    assert compose_plan <= set(SERVICES["notify-worker"]["environment"])
    incident = {"CANARY_INCIDENT_WEBHOOK_URL", "CANARY_INCIDENT_WEBHOOK_TOKEN"}
    assert incident <= set(SERVICES["runbook-worker"]["environment"])
    for name, spec in controller_services().items():
        if name not in ("notify-worker", "runbook-worker"):
            assert not (compose_plan | incident) & set(spec["environment"]), name


def test_optional_variables_default_to_empty_and_secrets_are_required() -> None:
    for name, spec in controller_services().items():
        for variable, value in spec["environment"].items():
            if variable.endswith(("_TOKEN", "_TOKENS", "_PASSWORD")) or "PASSWORD" in value:
                if "INCIDENT_WEBHOOK" in variable:
                    assert value == f"${{{variable}:-}}", (name, variable)
                else:
                    assert ":?" in value, (name, variable, "must be required")
            if variable.endswith("_URL") and "${" in value and "POSTGRES" not in value:
                assert value == f"${{{variable}:-}}", (name, variable)


def test_redis_keeps_messages_across_a_restart() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_mounted_config_files_exist() -> None:
    for spec in SERVICES.values():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), source


def test_no_secret_is_written_in_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    assert "CANARY_FLOWER_PASSWORD: ${FLOWER_PASSWORD:?" in text
    assert "CANARY_API_TOKENS: ${CANARY_API_TOKENS:?" in text
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/"), secret
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "secrets/" in ignored


def test_an_unknown_command_is_caught() -> None:
    node, _ = resolve(["no-such-command", "--x"])
    assert hasattr(node, "commands")
