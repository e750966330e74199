"""docker-compose.yml parses, and every controller container runs a real `canary`
command with options the CLI knows. (No Docker engine runs here, so the file is
checked, not started.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main
import yaml

from controller.cli import app
from tasks.app import QUEUES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OUR_IMAGE = "canary-controller:latest"


def our_containers() -> dict[str, list[str]]:
    return {
        name: spec["command"]
        for name, spec in COMPOSE["services"].items()
        if spec.get("image") == OUR_IMAGE or spec.get("build")
    }


def resolve(command: list[str]) -> tuple[Any, list[str]]:
    """Walk the CLI's command tree along the argv; return the command and the rest.

    Typer ships its own copy of click, so groups are recognised by their
    ``commands`` mapping rather than by class."""
    node = typer.main.get_command(app)
    rest = list(command)
    while hasattr(node, "commands") and rest and rest[0] in node.commands:
        node = node.commands[rest.pop(0)]
    return node, rest


def test_compose_has_the_parts_of_the_design() -> None:
    services = set(COMPOSE["services"])
    assert {
        "redis",
        "postgres",
        "prometheus",
        "haproxy",
        "api",
        "worker",
        "rollback-worker",
        "beat",
        "flower",
        "demo-blue",
        "demo-green",
        "migrate",
    } <= services


def test_every_controller_command_exists_with_its_options() -> None:
    containers = our_containers()
    assert len(containers) >= 8
    for name, command in containers.items():
        node, rest = resolve(command)
        assert not hasattr(node, "commands"), f"{name}: {command} names no command"
        known = {opt for param in node.params for opt in getattr(param, "opts", [])}
        options = [arg for arg in rest if arg.startswith("--")]
        unknown = [opt for opt in options if opt.split("=")[0] not in known]
        assert not unknown, f"{name}: unknown options {unknown} for {command}"
        ctx = node.make_context(f"canary {name}", list(rest), resilient_parsing=False)
        assert ctx is not None


def test_every_queue_has_a_worker_of_its_own() -> None:
    queues = {
        name: cmd[cmd.index("--queues") + 1]
        for name, cmd in our_containers().items()
        if cmd[0] == "worker"
    }
    assert sorted(queues.values()) == sorted(QUEUES)


def test_redis_keeps_messages_across_a_restart() -> None:
    redis = COMPOSE["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_mounted_config_files_exist() -> None:
    for spec in COMPOSE["services"].values():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), source


def test_no_secret_is_written_in_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    assert "CANARY_FLOWER_PASSWORD: ${FLOWER_PASSWORD:?" in text
    assert "CANARY_API_TOKENS: ${CANARY_API_TOKENS:?" in text


def test_an_unknown_command_is_caught() -> None:
    node, _ = resolve(["no-such-command", "--x"])
    assert hasattr(node, "commands")
