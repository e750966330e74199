"""The systemd units in config/systemd run real `canary` commands with options the
CLI knows, cover every queue, keep secrets out of the unit files, and serve every
worker's metrics on a port the systemd layout's Prometheus scrapes."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import yaml

from tasks.app import QUEUES
from tests.unit.test_compose import resolve

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "config" / "systemd"
PROMETHEUS = yaml.safe_load((ROOT / "config" / "prometheus" / "systemd.yml").read_text())
CANARY = "/opt/canary/.venv/bin/canary"
WORKER = "canary-worker@.service"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def drop_ins(name: str) -> list[Path]:
    """The drop-ins systemd reads for a unit (an instance's own directory)."""
    return sorted((UNITS / f"{name}.d").glob("*.conf"))


def environment(name: str, instance: str | None = None) -> dict[str, str]:
    """The Environment= variables of a unit, with an instance's drop-ins applied."""
    found: dict[str, str] = {}
    files = [UNITS / name]
    if instance is not None:
        files += drop_ins(name.replace("@.", f"@{instance}."))
    for path in files:
        for line in path.read_text().splitlines():
            if line.startswith("Environment="):
                for assignment in shlex.split(line.removeprefix("Environment=")):
                    key, _, value = assignment.partition("=")
                    found[key] = value
    return found


def commands(name: str, instance: str = "rollouts") -> list[list[str]]:
    """ExecStart and ExecStartPre as systemd runs them for ``instance`` (``%i``): the
    specifiers and the ``${VAR}`` of its environment expanded."""
    service = unit(name)["Service"]
    variables = environment(name, instance)

    def expand(word: str) -> str:
        word = word.replace("%i", instance).replace("%H", "host")
        return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), ""), word)

    lines = [service.get("ExecStart", ""), service.get("ExecStartPre", "")]
    return [[expand(word) for word in shlex.split(line)] for line in lines if line]


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
            node, rest = resolve(argv[1:])
            assert not hasattr(node, "commands"), f"{name}: {argv} names no command"
            known = {opt for param in node.params for opt in getattr(param, "opts", [])}
            unknown = [a for a in rest if a.startswith("--") and a not in known]
            assert not unknown, f"{name}: unknown options {unknown}"
            assert node.make_context(name, list(rest), resilient_parsing=False) is not None


def test_the_worker_template_names_every_queue_and_secrets_stay_outside() -> None:
    text = (UNITS / "canary-worker@.service").read_text()
    for queue in QUEUES:
        assert f"canary-worker@{queue}" in text, queue
    for path in UNITS.rglob("*"):
        if path.is_dir():
            continue
        body = path.read_text()
        assert "TOKEN=" not in body and "PASSWORD=" not in body, path.name
        if path.suffix == ".service":
            service = unit(path.name)["Service"]
            assert service["EnvironmentFile"] == "/etc/canary/canary.env"
            assert service["User"] == "canary" and service["NoNewPrivileges"] == "yes"


def test_the_prune_timer_runs_the_prune_service() -> None:
    assert unit("canary-prune.timer")["Timer"]["Unit"] == "canary-prune.service"


def metrics_port(queue: str) -> int:
    """The port the worker of ``queue`` serves its metrics on, as systemd starts it."""
    (argv,) = commands(WORKER, queue)
    assert "--metrics-port" in argv, f"canary-worker@{queue} serves no metrics: {argv}"
    value = argv[argv.index("--metrics-port") + 1]
    assert value.isdigit() and int(value) > 0, f"canary-worker@{queue}: --metrics-port {value!r}"
    return int(value)


def test_every_worker_instance_serves_its_metrics_on_a_port_of_its_own() -> None:
    """Without a port, canary_worker_up is never scraped and the controller's alerts
    say the rollback and reconcile queues have no worker, for ever."""
    ports = {queue: metrics_port(queue) for queue in QUEUES}
    assert len(set(ports.values())) == len(QUEUES), f"two workers on one port: {ports}"
    for queue in QUEUES:
        (conf,) = drop_ins(f"canary-worker@{queue}.service")
        assert conf.name == "metrics-port.conf"


def test_an_instance_without_a_port_does_not_start_unwatched() -> None:
    """A queue with no drop-in gets an empty --metrics-port, which the CLI refuses (a
    worker that failed to start is seen; a worker nobody scrapes is not)."""
    (argv,) = commands(WORKER, "rollback,notify")
    node, rest = resolve(argv[1:])
    try:
        node.make_context("worker", list(rest), resilient_parsing=False)
    except Exception as refused:  # click's BadParameter, through Typer's own click
        assert getattr(getattr(refused, "param", None), "name", None) == "metrics_port", refused
    else:
        raise AssertionError(f"a worker without a metrics port would start: {argv}")


def test_the_systemd_prometheus_config_scrapes_every_worker() -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    (static,) = jobs["canary-workers"]["static_configs"]
    scraped = {int(target.rsplit(":", 1)[1]) for target in static["targets"]}
    assert scraped == {metrics_port(queue) for queue in QUEUES}
    assert "canary-api" in jobs
