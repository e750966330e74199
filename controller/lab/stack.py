"""The whole rollout lab: every real part of a rollout, on free loopback ports.

``canary demo`` and the integration tests use the same lab: a stable and a canary
demo service behind HAProxy, a staging instance of the canary, Prometheus scraping
all three, synthetic load, and Celery workers and beat running the controller as
separate processes, exactly as in production.
"""

from __future__ import annotations

from pathlib import Path

from config import CONFIG_DIR
from controller.demo.loadgen import LoadGenerator
from controller.lab.alertmanager import AlertmanagerServer, start_alertmanager
from controller.lab.controllers import ControllerProcesses, LabSettings
from controller.lab.demo import DemoServiceProcess, start_demo_service
from controller.lab.deployer import Deployer
from controller.lab.errors import LabError
from controller.lab.haproxy import start_haproxy
from controller.lab.prometheus import start_prometheus
from controller.lab.redis import ensure_redis
from controller.plan import Plan
from controller.runtime import haproxy_router_factory
from controller.traffic.base import TrafficRouter
from controller.traffic.haproxy import HAProxyRouter

SLOTS = ("blue", "green")  # the two HAProxy servers of the service; blue starts stable
# Prometheus scrapes and evaluates this often, so judgements in tests take seconds;
# the alerting rules it loads must still fire at the slower intervals users scrape at
# (tests/unit/test_alert_rules_fire.py checks both).
SCRAPE_INTERVAL = "1s"
ALERT_RULES = (CONFIG_DIR / "prometheus" / "service-alerts.yml",)


class RolloutLab(ControllerProcesses):
    """Starts, reconfigures and stops the lab; ``with RolloutLab(...) as lab:``."""

    def __init__(self, workdir: Path, settings: LabSettings | None = None):
        super().__init__(workdir, settings or LabSettings())
        self.load: LoadGenerator | None = None
        self.instances: dict[str, DemoServiceProcess] = {}
        self.canary_slot = SLOTS[1]
        self.deployer: Deployer | None = None

    # -- servers --------------------------------------------------------------

    def start(self) -> RolloutLab:
        """Start Redis, the demo services, HAProxy, Prometheus and the load."""
        s = self.settings
        try:
            self.redis = self.group.add(ensure_redis(self.workdir, db=s.redis_db, own=s.own_redis))
            blue, green = SLOTS
            self.instances = {
                blue: self._start_instance(s.stable_version, "production"),
                green: self._start_instance(s.canary_version, "production"),
                "staging": self._start_instance(s.canary_version, "staging"),
            }
            self.haproxy = self.group.add(
                start_haproxy(
                    self.workdir,
                    s.service,
                    {blue: self.instances[blue].address, green: self.instances[green].address},
                    {blue: 100, green: 0},
                )
            )
            self.haproxy.wait_servers_up()
            self.prometheus = self.group.add(
                start_prometheus(
                    self.workdir,
                    [i.address for i in self.instances.values()],
                    scrape_interval=SCRAPE_INTERVAL,
                )
            )
            # Production users. Staging gets its synthetic load from the soak itself.
            self.load = LoadGenerator([(self.haproxy.url + "/checkout", s.production_rps)])
            self.load.start()
            self.group.add(self.load)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_instance(
        self, version: str, environment: str, port: int | None = None, warmup: float = 0.0
    ) -> DemoServiceProcess:
        return start_demo_service(
            self.workdir / "demo",
            version,
            service=self.settings.service,
            environment=environment,
            port=port,
            lazy_series=self.settings.lazy_error_series,
            warmup_seconds=warmup,
        )

    @property
    def stable_slot(self) -> str:
        return SLOTS[1] if self.canary_slot == SLOTS[0] else SLOTS[0]

    def slot_of(self, name: str) -> str:
        """An instance name: ``stable``/``canary`` name the slot in that role now."""
        return {"stable": self.stable_slot, "canary": self.canary_slot}.get(name, name)

    def instance(self, name: str) -> DemoServiceProcess:
        """An instance by slot (``blue``, ``green``), role (``stable``, ``canary``) or
        ``staging``."""
        return self.instances[self.slot_of(name)]

    def redeploy(self, name: str, version: str, warmup: float = 0.0) -> None:
        """Replace one demo instance with another version on the same port. ``warmup``:
        seconds its health check fails after the start while ``/version`` answers."""
        slot = self.slot_of(name)
        old = self.instances[slot]
        old.stop()
        self.instances[slot] = self._start_instance(
            version, old.environment, port=old.port, warmup=warmup
        )
        if self.haproxy is not None and slot in SLOTS:
            self.haproxy.wait_servers_up([slot])

    def slot_weights(self) -> dict[str, int]:
        """Raw HAProxy weights of the two slots, read from the router."""
        assert self.haproxy is not None, "lab not started"
        canary, stable = HAProxyRouter(
            self.haproxy.socket_path, self.settings.service, SLOTS[0], SLOTS[1]
        ).server_weights()
        return {SLOTS[1]: canary, SLOTS[0]: stable}

    def deploy_canary(self, version: str) -> None:
        """What a deploy system does before a rollout: the new version in staging and
        in the slot that carries no production traffic (the router says which)."""
        weights = self.slot_weights()
        idle = [slot for slot, weight in weights.items() if weight == 0]
        if len(idle) != 1:
            raise LabError(f"no single idle slot to deploy into: router weights {weights}")
        self.canary_slot = idle[0]
        self.redeploy("staging", version)
        self.redeploy(self.canary_slot, version)

    def set_faults(self, name: str, **knobs: float) -> dict[str, float]:
        """Set fault knobs on one instance (absolute: knobs left out go back to 0)."""
        return self.instance(name).set_faults(**knobs)

    def plan_variables(self) -> dict[str, str]:
        """Values for the demo plan's variables: where each slot and staging answer,
        and the Prometheus job that scrapes them."""
        values = {
            "blue_url": self.instances["blue"].url,
            "green_url": self.instances["green"].url,
            "staging_url": self.instances["staging"].url,
            "scrape_job": "lab",
        }
        if self.deployer is not None:
            values["deployer_url"] = self.deployer.url
        return values

    def start_deployer(self, warmup: float = 0.0) -> str:
        """A deploy system's API for plans in redeploy mode; returns its URL. Its
        instances fail their health check for ``warmup`` seconds after a deploy."""
        self.deployer = self.group.add(
            Deployer(lambda slot, version: self.redeploy(slot, version, warmup))
        )
        return self.deployer.url

    def router_for(self, plan: Plan, values: dict[str, str]) -> TrafficRouter:
        """What ``start_rollout`` needs to read the router, as workers build it."""
        assert self.haproxy is not None, "lab not started"
        return haproxy_router_factory(self.haproxy.socket_path)(plan, values)

    def router(self) -> HAProxyRouter:
        """The router as the current rollout sees it (stable and canary slots)."""
        assert self.haproxy is not None, "lab not started"
        return HAProxyRouter(
            self.haproxy.socket_path,
            backend=self.settings.service,
            stable_server=self.stable_slot,
            canary_server=self.canary_slot,
        )

    def start_alerting(self, api_url: str, token: str) -> AlertmanagerServer:
        """A real Alertmanager posting to the API's webhook, and Prometheus evaluating
        the shipped service alerting rules and sending to it."""
        assert self.prometheus is not None
        alertmanager = self.group.add(
            start_alertmanager(self.workdir, f"{api_url}/api/v1/alerts/alertmanager", token)
        )
        self.prometheus.reconfigure(
            [i.address for i in self.instances.values()],
            scrape_interval=SCRAPE_INTERVAL,
            rule_files=list(ALERT_RULES),
            alertmanagers=[alertmanager.address],
        )
        return alertmanager

    def stop(self) -> None:
        for instance in self.instances.values():
            instance.stop()
        self.group.stop()

    def __enter__(self) -> RolloutLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
