"""The controller's own processes in a lab: Celery workers by queue, beat, the API
and Flower, each a child process with the lab's settings, as in production.

A lab (the one-service ``RolloutLab``, the many-service ``FleetLab``) starts its
servers (Redis, Prometheus, HAProxy, a store) and sets the attributes below; this
class turns them into ``CANARY_*`` settings and runs the controller against them.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from controller.lab.haproxy import HAProxyServer
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess, ProcessGroup, http_ready, tcp_ready
from controller.lab.prometheus import PrometheusServer
from controller.lab.redis import RedisServer


@dataclass
class LabSettings:
    service: str = "checkout"
    stable_version: str = "1.0.0"
    canary_version: str = "1.1.0"
    production_rps: float = 60.0
    database_url: str | None = None
    reconcile_interval_seconds: float = 0.5
    lease_seconds: float = 45.0
    task_time_limit_seconds: float = 40.0
    own_redis: bool = False
    # The database of a borrowed Redis (the one on 6379): the demo takes it from the
    # settings' broker URL, so it lands where the operator said.
    redis_db: int = 9
    # Like a service using labelled prometheus_client counters without pre-creating
    # them: error series appear only once the first error happens.
    lazy_error_series: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


class ControllerProcesses:
    """Workers, beat, API and Flower against the servers a lab started."""

    def __init__(self, workdir: Path, settings: LabSettings):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.group = ProcessGroup()
        self.queue_prefix = f"lab-{secrets.token_hex(4)}"
        self.redis: RedisServer | None = None
        self.haproxy: HAProxyServer | None = None
        self.prometheus: PrometheusServer | None = None
        self.workers: dict[str, ManagedProcess] = {}
        self.worker_metrics: dict[str, str] = {}
        self.database_url = settings.database_url or f"sqlite:///{self.workdir / 'canary.db'}"

    def env(self) -> dict[str, str]:
        """The ``CANARY_*`` settings every controller process of this lab runs with."""
        assert self.redis and self.prometheus and self.haproxy, "lab not started"
        s = self.settings
        return {
            "CANARY_DATABASE_URL": self.database_url,
            "CANARY_BROKER_URL": self.redis.url,
            "CANARY_PROMETHEUS_URL": self.prometheus.url,
            "CANARY_HAPROXY_SOCKET": self.haproxy.socket_path,
            "CANARY_QUEUE_PREFIX": self.queue_prefix,
            "CANARY_RECONCILE_INTERVAL_SECONDS": str(s.reconcile_interval_seconds),
            "CANARY_LEASE_SECONDS": str(s.lease_seconds),
            "CANARY_TASK_TIME_LIMIT_SECONDS": str(s.task_time_limit_seconds),
            "CANARY_LOG_JSON": "true",
            **s.extra_env,
        }

    def start_worker(
        self,
        name: str,
        queues: str = "rollouts",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        ready_within: float = 60.0,
    ) -> ManagedProcess:
        """A Celery worker process (``canary worker``) serving its metrics on a free
        port (``worker_metrics[name]``), with ``env`` over the lab's settings; waits
        until it consumes."""
        port = free_port()
        self.worker_metrics[name] = f"127.0.0.1:{port}"
        process = ManagedProcess(
            f"worker-{name}",
            [
                sys.executable,
                "-m",
                "controller",
                "worker",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"{name}@{self.queue_prefix}",
                "--metrics-port",
                str(port),
            ],
            self.workdir / "workers",
            env={**self.env(), **(env or {})},
        )
        self.workers[name] = self.group.add(process)
        process.wait_ready(lambda: b"ready." in process.log_path.read_bytes(), timeout=ready_within)
        return process

    def stop_worker(self, name: str) -> None:
        """Stop a worker for good (a warm shutdown: tasks in hand finish first)."""
        self.workers.pop(name).stop(grace=30.0)
        self.worker_metrics.pop(name, None)

    def restart_worker(self, name: str, down_seconds: float = 1.0) -> ManagedProcess:
        """SIGKILL a worker (a crash, an OOM kill) and start it again after
        ``down_seconds``, as its supervisor would; waits until it consumes."""
        old = self.workers[name]
        old.kill()
        time.sleep(down_seconds)
        offset = old.log_path.stat().st_size
        new = self.group.replace(old, old.respawn())
        self.workers[name] = new
        new.wait_ready(lambda: b"ready." in new.log_path.read_bytes()[offset:], timeout=60)
        return new

    def revive_exited(self) -> list[str]:
        """Start again every worker or beat that exited on its own, as a supervisor
        (systemd ``Restart=always``, compose ``restart: unless-stopped``) would; one
        line per process revived, with its exit code and last error line."""
        revived = []
        for name, process in list(self.workers.items()):
            if process.alive:
                continue
            code, last_error = process.returncode, _last_error(process.log_tail())
            self.workers[name] = self.group.replace(process, process.respawn())
            revived.append(f"{name} exited on its own (code {code}: {last_error}), restarted")
        return revived

    def start_beat(self, ready_within: float = 30.0) -> ManagedProcess:
        process = ManagedProcess(
            "beat",
            [
                sys.executable,
                "-m",
                "controller",
                "beat",
                "--schedule",
                str(self.workdir / "workers" / "beat-schedule"),
            ],
            self.workdir / "workers",
            env=self.env(),
        )
        self.workers["beat"] = self.group.add(process)
        process.wait_ready(
            lambda: b"beat: Starting" in process.log_path.read_bytes(), timeout=ready_within
        )
        return process

    def start_controller(self) -> None:
        """Workers by urgency as in production (rollouts; the rollback and reconcile
        queues, both short and urgent, on one worker of their own; runbooks and
        notifications), and beat."""
        self.start_worker("rollouts", "rollouts", concurrency=2)
        self.start_worker("rollback", "rollback,reconcile", concurrency=2)
        self.start_worker("aftercare", "runbook,notify", concurrency=2)
        self.start_beat()

    def start_api(
        self,
        name: str = "api",
        overrides: dict[str, str] | None = None,
        ready_within: float = 30.0,
    ) -> str:
        """The HTTP API (``canary api``) on a free port; returns its base URL.
        ``overrides`` replace settings of this one process (a broker that is down)."""
        port = free_port()
        process = ManagedProcess(
            name,
            [sys.executable, "-m", "controller", "api", "--port", str(port)],
            self.workdir / "workers",
            env={**self.env(), **(overrides or {})},
        )
        self.workers[name] = self.group.add(process)
        url = f"http://127.0.0.1:{port}"
        process.wait_ready(lambda: http_ready(f"{url}/healthz"), timeout=ready_within)
        return url

    def start_flower(self) -> str:
        """Flower (``canary flower``) on the workers' events; basic auth from the settings."""
        port = free_port()
        process = ManagedProcess(
            "flower",
            [sys.executable, "-m", "controller", "flower", "--port", str(port)],
            self.workdir / "workers",
            env=self.env(),
        )
        self.workers["flower"] = self.group.add(process)
        url = f"http://127.0.0.1:{port}"
        process.wait_ready(lambda: tcp_ready("127.0.0.1", port), timeout=30)
        return url


def _last_error(log_tail: str) -> str:
    """The last line of a log tail that looks like an error, shortened."""
    lines = [line for line in log_tail.splitlines() if "rror" in line or "CRITICAL" in line]
    return (lines[-1] if lines else "no error logged")[:200]
