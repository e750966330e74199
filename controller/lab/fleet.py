"""Dozens of services under one controller: the lab of the chaos benchmark.

Each service has two slots (blue stable at 1.0.0, green the canary at 2.0.0 with
the faults it is known in advance to have), a backend and a frontend of its own in
one HAProxy, and user traffic through it. All instances run in one fleet process;
Redis and PostgreSQL are the lab's own, so the benchmark may restart them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import PLANS_DIR
from controller.demo.loadgen import LoadGenerator
from controller.lab.controllers import ControllerProcesses, LabSettings
from controller.lab.demo import PROJECT_ROOT, child_env
from controller.lab.errors import LabError
from controller.lab.haproxy import start_haproxy_backends
from controller.lab.postgres import PostgresServer, start_postgres
from controller.lab.process import ManagedProcess
from controller.lab.prometheus import LAB_JOB, start_prometheus
from controller.lab.redis import ensure_redis
from controller.plan import Plan
from controller.plan_loader import load_plan
from controller.runtime import haproxy_router_factory
from controller.store.db import migrate
from controller.traffic.base import TrafficRouter

STABLE_VERSION = "1.0.0"
CANARY_VERSION = "2.0.0"
STABLE_SLOT, CANARY_SLOT = "blue", "green"


@dataclass(frozen=True)
class FleetService:
    """One service of the fleet and the faults its canary has (none: healthy)."""

    name: str
    faults: dict[str, float] = field(default_factory=dict)

    @property
    def faulty(self) -> bool:
        return any(value > 0 for value in self.faults.values())


def fleet_plan_data(
    canary_weight: int, canary_hold: str, min_requests: int, trend_step: str, min_points: int
) -> dict[str, Any]:
    """The demo plan as data, for a fleet: no staging soak (no staging slot) and no
    approvals (nobody to approve), its canary, request minimums and trend step set
    for the fleet's traffic and scrape interval. Callers change what else differs."""
    data = load_plan(PLANS_DIR / "demo.yaml").model_dump(mode="json")
    stages = [stage for stage in data["stages"] if stage["kind"] != "soak"]
    for stage in stages:
        stage.pop("approval", None)
        if stage["kind"] == "canary":
            stage.update(weight=canary_weight, hold=canary_hold)
    data["stages"] = stages
    for criterion in data["stop_criteria"]:
        if "min_requests" in criterion:
            criterion["min_requests"] = min_requests
        if criterion["judge"] == "rising_trend":
            criterion.update(step=trend_step, min_points=min_points)
    return data


class FleetLab(ControllerProcesses):
    """Starts and stops the fleet; ``with FleetLab(...) as lab:``."""

    def __init__(
        self,
        workdir: Path,
        services: list[FleetService],
        settings: LabSettings | None = None,
        rps_per_service: float = 5.0,
        scrape_interval: str = "2s",
    ) -> None:
        super().__init__(workdir, settings or LabSettings())
        if not services:
            raise LabError("a fleet needs at least one service")
        self.services = {service.name: service for service in services}
        self.rps_per_service = rps_per_service
        self.scrape_interval = scrape_interval
        self.postgres: PostgresServer | None = None
        self.fleet: ManagedProcess | None = None
        self.addresses: dict[str, dict[str, str]] = {}  # service -> slot -> host:port

    def start(self) -> FleetLab:
        """Redis and PostgreSQL of its own, the fleet, HAProxy, Prometheus, the load."""
        try:
            self.redis = self.group.add(ensure_redis(self.workdir, own=True))
            if self.settings.database_url is None:
                self.postgres = self.group.add(start_postgres(self.workdir))
                self.database_url = self.postgres.url
            migrate(self.database_url)
            self._start_fleet()
            first_weights = {STABLE_SLOT: 100, CANARY_SLOT: 0}
            self.haproxy = self.group.add(
                start_haproxy_backends(
                    self.workdir,
                    [(name, self.addresses[name], first_weights) for name in self.services],
                    check_inter=self.health_check_interval,
                )
            )
            self._wait_all_servers_up()
            self.prometheus = self.group.add(
                start_prometheus(
                    self.workdir, self._scrape_targets(), scrape_interval=self.scrape_interval
                )
            )
            self._start_load()
        except BaseException:
            self.stop()
            raise
        return self

    # HAProxy checks every server this often.
    health_check_interval = "1s"

    def _scrape_targets(self) -> list[str]:
        """What Prometheus scrapes: every instance."""
        return [address for slots in self.addresses.values() for address in slots.values()]

    def _start_load(self) -> None:
        """User traffic through each service's HAProxy frontend."""
        assert self.haproxy is not None
        load = LoadGenerator(
            [
                (f"{self.haproxy.frontends[name]}/checkout", self.rps_per_service)
                for name in self.services
            ]
        )
        load.start()
        self.group.add(load)

    def _start_fleet(self) -> None:
        instances = []
        for name, service in self.services.items():
            for slot, version, faults in (
                (STABLE_SLOT, STABLE_VERSION, {}),
                (CANARY_SLOT, CANARY_VERSION, service.faults),
            ):
                instances.append(
                    {
                        "slot": slot,
                        "service": name,
                        "version": version,
                        "faults": faults,
                        "lazy_series": True,
                    }
                )
        spec, ports_file = self.workdir / "fleet.json", self.workdir / "fleet-ports.json"
        spec.write_text(json.dumps({"instances": instances}, indent=1))
        self.fleet = self.group.add(
            ManagedProcess(
                "fleet",
                [sys.executable, "-m", "controller.demo.fleet"]
                + ["--spec", str(spec), "--ports", str(ports_file)],
                self.workdir,
                env=child_env(),
                cwd=PROJECT_ROOT,
            )
        )
        self.fleet.wait_ready(ports_file.exists, timeout=60)
        for item, port in zip(instances, json.loads(ports_file.read_text()), strict=True):
            self.addresses.setdefault(item["service"], {})[item["slot"]] = f"127.0.0.1:{port}"

    def _wait_all_servers_up(self, timeout: float = 30.0) -> None:
        assert self.haproxy is not None
        deadline = time.monotonic() + timeout
        while True:
            status = self.haproxy.command("show stat")
            down = [line for line in status.splitlines() if ",DOWN," in line]
            if not down:
                return
            if time.monotonic() > deadline:
                raise LabError(f"HAProxy servers still down after {timeout}s: {down[:3]}")
            time.sleep(0.2)

    def plan_variables(self, name: str) -> dict[str, str]:
        """Values for the demo plan's variables for one service of the fleet."""
        slots = self.addresses[name]
        return {
            "blue_url": f"http://{slots[STABLE_SLOT]}",
            "green_url": f"http://{slots[CANARY_SLOT]}",
            "staging_url": f"http://{slots[CANARY_SLOT]}",
            "scrape_job": LAB_JOB,
        }

    def router_for(self, plan: Plan, values: dict[str, str]) -> TrafficRouter:
        """What ``start_rollout`` needs to read the router, as workers build it."""
        assert self.haproxy is not None, "lab not started"
        return haproxy_router_factory(self.haproxy.socket_path)(plan, values)

    def canary_weights(self) -> dict[str, int]:
        """The canary slot's raw HAProxy weight of every service, in one command."""
        assert self.haproxy is not None, "lab not started"
        return {
            name: servers.get(CANARY_SLOT, 0)
            for name, servers in self.haproxy.weights().items()
            if name in self.services
        }

    def stop(self) -> None:
        self.group.stop()

    def __enter__(self) -> FleetLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SyntheticFleetLab(FleetLab):
    """A fleet of synthetic healthy services (``controller.lab.synthetic_fleet``), for
    the scale benchmark: every instance in one asyncio process answering what the
    controller reads (``/version``, health, user requests), their series on one
    exporter that Prometheus scrapes as one target, their user traffic from a second
    process, and HAProxy checking each server every 10 s. HAProxy, Prometheus, the
    store, the broker and the controller are the real ones; only the services are
    thin, so that a run of a thousand services measures the controller."""

    health_check_interval = "10s"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        faulty = [name for name, service in self.services.items() if service.faulty]
        if faulty:
            raise LabError(f"synthetic services are healthy only; faults asked for {faulty[:3]}")
        self.exporter = ""

    def _start_fleet(self) -> None:
        instances = [
            {"service": name, "slot": slot, "version": version}
            for name in self.services
            for slot, version in ((STABLE_SLOT, STABLE_VERSION), (CANARY_SLOT, CANARY_VERSION))
        ]
        spec, ports_file = self.workdir / "fleet.json", self.workdir / "fleet-ports.json"
        spec.write_text(json.dumps({"instances": instances}))
        self.fleet = self._synthetic("fleet", "serve", "--spec", spec, "--ports", ports_file)
        self.fleet.wait_ready(ports_file.exists, timeout=120)
        ports = json.loads(ports_file.read_text())
        for item, port in zip(instances, ports["instances"], strict=True):
            self.addresses.setdefault(item["service"], {})[item["slot"]] = f"127.0.0.1:{port}"
        self.exporter = f"127.0.0.1:{ports['exporter']}"

    def _scrape_targets(self) -> list[str]:
        return [self.exporter]

    def _start_load(self) -> None:
        assert self.haproxy is not None
        targets = self.workdir / "load-targets.json"
        targets.write_text(
            json.dumps(
                [self.haproxy.frontends[name].removeprefix("http://") for name in self.services]
            )
        )
        load = self._synthetic(
            "load", "load", "--targets", targets, "--rate", f"{self.rps_per_service:g}"
        )
        load.wait_ready(lambda: "synthetic load running" in load.log_tail(), timeout=60)

    def _synthetic(self, name: str, mode: str, *args: object) -> ManagedProcess:
        """A ``controller.lab.synthetic_fleet`` process of this lab."""
        command = [sys.executable, "-m", "controller.lab.synthetic_fleet", mode]
        return self.group.add(
            ManagedProcess(
                name,
                command + [str(arg) for arg in args],
                self.workdir,
                env=child_env(),
                cwd=PROJECT_ROOT,
            )
        )
