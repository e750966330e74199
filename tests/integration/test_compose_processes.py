"""docker-compose.yml's controller containers, run as processes against the lab.

There is no Docker engine here, so this is the closest run of the compose system:
each controller service's own command (`canary db upgrade`, `api`, a worker per
queue, `beat`, `flower`) runs with the service's own environment from the compose
file, only its addresses mapped to the lab's loopback servers (PostgreSQL, Redis,
Prometheus, HAProxy and the demo service's slots and staging, so the URL allow-list
names loopback instead of the demo services). Each is then judged healthy by the
very healthcheck command the compose file declares. Finally the compose plan
(config/plans/compose.yaml) runs end to end through those processes, started and
approved through the API as an operator would, with its URL variables overridden
to the lab's slots.

What differs from a container, on purpose: ports and the beat schedule path are
free ones of this machine (the containers each have their own), workers get a node
name each (containers each have their own host name), and the queues carry the
lab's prefix (CANARY_QUEUE_PREFIX) because the tests share one Redis.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from config import PLANS_DIR
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess
from controller.lab.stack import RolloutLab
from controller.plan_loader import load_plan
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import STABLE, deploy, snapshot, start_lab, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
CONTROLLER = [name for name, spec in SERVICES.items() if spec.get("build")]
ONE_SHOT = "migrate"
COMPOSE_PLAN = load_plan(PLANS_DIR / "compose.yaml")
# API token names as scripts/compose-secrets writes them: who starts, and the
# approvers of the compose plan (one may not approve a rollout one started).
STARTER = "deployer"
APPROVERS = {"alice": "release_manager", "dave": "security_approver", "carol": "sre_oncall"}
HEALTHY_WITHIN_SECONDS = 90.0  # the worker healthchecks' start_period + retries


@dataclass
class Secrets:
    """Values for the variables the compose file requires, fresh for each run."""

    tokens: dict[str, str]
    alertmanager: str
    metrics: str
    flower_password: str

    @classmethod
    def generate(cls) -> Secrets:
        return cls(
            tokens={name: secrets.token_urlsafe(24) for name in [STARTER, *APPROVERS]},
            alertmanager=secrets.token_urlsafe(24),
            metrics=secrets.token_urlsafe(24),
            flower_password=secrets.token_urlsafe(24),
        )

    def variables(self) -> dict[str, str]:
        return {
            "CANARY_API_TOKENS": ",".join(f"{n}:operator:{t}" for n, t in self.tokens.items()),
            "CANARY_ALERTMANAGER_TOKEN": self.alertmanager,
            "CANARY_METRICS_TOKEN": self.metrics,
            "FLOWER_USER": "flower",
            "FLOWER_PASSWORD": self.flower_password,
        }


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR:?message}`` (required) and ``${VAR:-default}``; a required
    variable with no value fails the test as docker-compose would refuse to start."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if name in variables:
            return variables[name]
        if kind == ":?":
            pytest.fail(f"the compose file requires {name} and the test gives none: {rest}")
        return rest

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:\?|:-)([^}]*)\}", one, value)


def lab_addresses(lab: RolloutLab) -> dict[str, str]:
    """Each compose setting that names a server, and that server in the lab."""
    assert lab.redis and lab.prometheus and lab.haproxy
    return {
        "CANARY_DATABASE_URL": lab.database_url,
        "CANARY_BROKER_URL": lab.redis.url,
        "CANARY_PROMETHEUS_URL": lab.prometheus.url,
        "CANARY_HAPROXY_SOCKET": lab.haproxy.socket_path,
        # The compose plan's slots and staging (demo-blue, ...) are the lab's
        # loopback instances.
        "CANARY_ALLOWED_URL_HOSTS": "127.0.0.1",
    }


def service_env(name: str, lab: RolloutLab, secrets_: Secrets) -> dict[str, str]:
    """The compose service's environment: its addresses mapped to the lab, every other
    value as the compose file gives it (required secrets from ``secrets_``)."""
    addresses = lab_addresses(lab)
    variables = {**secrets_.variables(), "POSTGRES_PASSWORD": "unused-in-the-lab"}
    env = {
        key: addresses.get(key) or interpolate(str(value), variables)
        for key, value in SERVICES[name]["environment"].items()
    }
    return {**env, "CANARY_QUEUE_PREFIX": lab.queue_prefix, "CANARY_LOG_JSON": "true"}


def localize(args: list[str], replacements: dict[str, str]) -> list[str]:
    """Compose argv with container ports and paths replaced by this machine's."""
    out = []
    for arg in args:
        for old, new in replacements.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


@dataclass
class ComposeProcess:
    name: str
    process: ManagedProcess
    replacements: dict[str, str]

    def healthcheck(self) -> list[str]:
        """The compose healthcheck's command, localized like the service's command."""
        test = SERVICES[self.name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", test
        return localize([sys.executable, *test[2:]], self.replacements)


def replacements_for(name: str, workdir: Path) -> dict[str, str]:
    """Container ports and paths -> free ones here; binds on loopback only."""
    command = SERVICES[name]["command"]
    replacements = {"0.0.0.0": "127.0.0.1"}
    for option in ("--port", "--metrics-port"):
        if option in command:
            replacements[command[command.index(option) + 1]] = str(free_port())
    if "--schedule" in command:
        replacements[command[command.index("--schedule") + 1]] = str(workdir / f"{name}-schedule")
    return replacements


def start(name: str, lab: RolloutLab, secrets_: Secrets, workdir: Path) -> ComposeProcess:
    replacements = replacements_for(name, workdir)
    args = localize(SERVICES[name]["command"], replacements)
    if args[0] == "worker":
        args += ["--hostname", f"{name}@{lab.queue_prefix}"]
    process = ManagedProcess(
        f"compose-{name}",
        [sys.executable, "-m", "controller", *args],
        workdir,
        env=service_env(name, lab, secrets_),
    )
    lab.group.add(process)
    return ComposeProcess(name, process, replacements)


def probe(argv: list[str]) -> tuple[int, str]:
    """Run a healthcheck command; its exit code and what it said."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return result.returncode, (result.stdout + result.stderr).strip()


def wait_healthy(service: ComposeProcess, timeout: float = HEALTHY_WITHIN_SECONDS) -> str:
    """Run the healthcheck as Docker would, until it passes; its last line on success."""
    deadline = time.monotonic() + timeout
    while True:
        code, output = probe(service.healthcheck())
        if code == 0:
            return output
        if not service.process.alive or time.monotonic() > deadline:
            pytest.fail(
                f"{service.name} never healthy ({output}); alive={service.process.alive}\n"
                f"{service.process.log_tail()}",
                pytrace=False,
            )
        time.sleep(1.0)


@dataclass
class ComposeLab:
    lab: RolloutLab
    secrets: Secrets
    services: dict[str, ComposeProcess]
    migrate_output: str

    @property
    def api_url(self) -> str:
        port = self.services["api"].replacements[
            SERVICES["api"]["command"][SERVICES["api"]["command"].index("--port") + 1]
        ]
        return f"http://127.0.0.1:{port}"

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.secrets.tokens[who]}"},
            trust_env=False,
            timeout=10,
        )


@pytest.fixture(scope="module")
def compose_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeLab]:
    """The lab's servers, and every controller service of the compose file on them."""
    workdir = tmp_path_factory.mktemp("compose")
    with postgres_schema() as database_url:
        lab = start_lab(workdir, database_url)
        try:
            secrets_ = Secrets.generate()
            migrate = start(ONE_SHOT, lab, secrets_, workdir / "processes")
            code = migrate.process.wait(timeout=120)
            assert code == 0, migrate.process.log_tail()
            services = {
                name: start(name, lab, secrets_, workdir / "processes")
                for name in CONTROLLER
                if name != ONE_SHOT
            }
            yield ComposeLab(lab, secrets_, services, migrate.process.log_tail())
        finally:
            lab.stop()


def test_every_controller_service_comes_up_healthy_by_its_own_healthcheck(
    compose_lab: ComposeLab,
) -> None:
    assert set(compose_lab.services) == set(CONTROLLER) - {ONE_SHOT}
    assert {"api", "beat", "flower"} <= set(compose_lab.services)
    for service in compose_lab.services.values():
        output = wait_healthy(service)
        assert output.startswith("healthy:"), (service.name, output)
    # The API is ready, not just up: its database, broker and Prometheus answer.
    ready = httpx.get(f"{compose_lab.api_url}/readyz", trust_env=False, timeout=10)
    assert ready.status_code == 200, ready.text
    # Flower keeps its basic auth; only the healthcheck path is open.
    flower = compose_lab.services["flower"].healthcheck()[-1].rsplit("/", 1)[0]
    assert httpx.get(f"{flower}/", trust_env=False, timeout=10).status_code == 401


def test_the_healthchecks_fail_when_there_is_nothing_healthy(
    compose_lab: ComposeLab, tmp_path: Path
) -> None:
    """The same probes, pointed where no worker listens and no beat writes."""
    nobody = str(free_port())
    worker = compose_lab.services["worker"]
    command = SERVICES["worker"]["command"]
    port = worker.replacements[command[command.index("--metrics-port") + 1]]
    code, output = probe(localize(worker.healthcheck(), {port: nobody}))
    assert code == 1 and output.startswith("unhealthy:"), output
    beat = compose_lab.services["beat"]
    schedule = next(v for k, v in beat.replacements.items() if k.startswith("/"))
    code, output = probe(localize(beat.healthcheck(), {schedule: str(tmp_path / "none")}))
    assert code == 1 and "no schedule file" in output, output


def test_the_compose_plan_runs_end_to_end_through_the_compose_processes(
    compose_lab: ComposeLab,
) -> None:
    lab = compose_lab.lab
    for service in compose_lab.services.values():
        wait_healthy(service)
    version = deploy(lab)
    with compose_lab.client(STARTER) as deployer:
        started = deployer.post(
            "/api/v1/rollouts",
            json={
                "plan": "compose",
                "service": lab.settings.service,
                "version": version,
                "stable": STABLE,
                "variables": lab.plan_variables(),
            },
        )
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]
    stages = {"preflight": [r.role for r in COMPOSE_PLAN.gates.approvals]}
    stages |= {s.name: list(s.approval) for s in COMPOSE_PLAN.stages if s.approval}
    for stage, roles in stages.items():
        for role in roles:
            (who,) = [name for name, r in APPROVERS.items() if r == role]
            with compose_lab.client(who) as client:
                answer = client.post(
                    f"/api/v1/rollouts/{rollout_id}/approve", json={"role": role, "stage": stage}
                )
                assert answer.status_code == 200, answer.text
    rollout = wait_for(
        lab, rollout_id, lambda r, _: r.state in ("succeeded", "rolled_back", "aborted"), 240
    )
    _, events = snapshot(lab, rollout_id)
    assert rollout.state == "succeeded", [f"{e.kind}: {e.message}" for e in events[-10:]]
    assert [e.data["weight"] for e in events if e.kind == "weight_set"] == [0, 10, 25, 50, 100]
    assert lab.router().get_canary_weight() == 100
    assert rollout.plan_name == "compose"
