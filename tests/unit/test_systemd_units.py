"""The systemd units in config/systemd run real `canary` commands with options the
CLI knows, cover every queue, and keep secrets out of the unit files."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from tasks.app import QUEUES
from tests.unit.test_compose import resolve

UNITS = Path(__file__).resolve().parents[2] / "config" / "systemd"
CANARY = "/opt/canary/.venv/bin/canary"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def commands(name: str) -> list[list[str]]:
    service = unit(name)["Service"]
    lines = [service.get("ExecStart", ""), service.get("ExecStartPre", "")]
    return [shlex.split(line) for line in lines if line]


def test_every_unit_runs_a_canary_command_the_cli_knows() -> None:
    services = sorted(p.name for p in UNITS.glob("*.service"))
    assert services == [
        "canary-api.service",
        "canary-beat.service",
        "canary-flower.service",
        "canary-prune.service",
        "canary-worker@.service",
    ]
    for name in services:
        for argv in commands(name):
            assert argv[0] == CANARY, (name, argv)
            args = [a.replace("%i", "rollouts").replace("%H", "host") for a in argv[1:]]
            node, rest = resolve(args)
            assert not hasattr(node, "commands"), f"{name}: {argv} names no command"
            known = {opt for param in node.params for opt in getattr(param, "opts", [])}
            unknown = [a for a in rest if a.startswith("--") and a not in known]
            assert not unknown, f"{name}: unknown options {unknown}"
            assert node.make_context(name, list(rest), resilient_parsing=False) is not None


def test_the_worker_template_names_every_queue_and_secrets_stay_outside() -> None:
    text = (UNITS / "canary-worker@.service").read_text()
    for queue in QUEUES:
        assert f"canary-worker@{queue}" in text, queue
    for path in UNITS.iterdir():
        body = path.read_text()
        assert "TOKEN=" not in body and "PASSWORD=" not in body, path.name
        if path.suffix == ".service":
            service = unit(path.name)["Service"]
            assert service["EnvironmentFile"] == "/etc/canary/canary.env"
            assert service["User"] == "canary" and service["NoNewPrivileges"] == "yes"


def test_the_prune_timer_runs_the_prune_service() -> None:
    assert unit("canary-prune.timer")["Timer"]["Unit"] == "canary-prune.service"
