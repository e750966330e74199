"""A throwaway Prometheus scraping lab targets.

The scrape interval doubles as the rule evaluation interval so that alert and
recording rules react as fast as the data arrives; a 1s interval keeps canary
judgements in tests to a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from controller.lab.binaries import require_binary
from controller.lab.errors import LabError
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess, http_ready

LAB_JOB = "lab"


def render_config(
    targets: list[str],
    scrape_interval: str = "1s",
    rule_files: list[Path] | None = None,
    extra_scrape_configs: list[dict[str, Any]] | None = None,
    alertmanagers: list[str] | None = None,
) -> dict[str, Any]:
    """Build the prometheus.yml content; one job (``lab``) scrapes ``targets``."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": [
            {"job_name": LAB_JOB, "static_configs": [{"targets": list(targets)}]},
            *(extra_scrape_configs or []),
        ],
    }
    if rule_files:
        config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    return config


@dataclass
class PrometheusServer:
    """A running Prometheus owned by the lab."""

    url: str
    port: int
    process: ManagedProcess
    config_path: Path
    workdir: Path

    def reconfigure(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        rule_files: list[Path] | None = None,
        extra_scrape_configs: list[dict[str, Any]] | None = None,
        alertmanagers: list[str] | None = None,
    ) -> None:
        """Rewrite prometheus.yml and reload it without losing stored samples."""
        config = render_config(
            targets, scrape_interval, rule_files, extra_scrape_configs, alertmanagers
        )
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.reload()

    def reload(self, timeout: float = 10.0) -> None:
        """Ask Prometheus to re-read its config and rule files.

        Raises:
            LabError: Prometheus rejected the new configuration (e.g. a bad rule).
        """
        try:
            response = httpx.post(f"{self.url}/-/reload", timeout=timeout, trust_env=False)
        except httpx.HTTPError as exc:
            raise LabError(f"prometheus reload failed: {exc}") from exc
        if response.status_code != 200:
            raise LabError(
                f"prometheus rejected its configuration ({response.status_code}): "
                f"{response.text.strip()}"
            )

    def query(self, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Run an instant query and return ``data.result`` (a test convenience)."""
        response = httpx.get(
            f"{self.url}/api/v1/query",
            params={"query": promql},
            timeout=timeout,
            trust_env=False,
        )
        body = response.json()
        if body.get("status") != "success":
            raise LabError(f"prometheus query {promql!r} failed: {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.process.stop(grace=10.0)

    def start_again(self, timeout: float = 30.0) -> None:
        """Start a stopped Prometheus on the same port and storage (an outage ending)."""
        self.process = self.process.respawn()
        self.process.wait_ready(lambda: http_ready(f"{self.url}/-/ready"), timeout=timeout)


def start_prometheus(
    workdir: Path,
    targets: list[str],
    scrape_interval: str = "1s",
    rule_files: list[Path] | None = None,
    extra_scrape_configs: list[dict[str, Any]] | None = None,
    alertmanagers: list[str] | None = None,
    timeout: float = 30.0,
) -> PrometheusServer:
    """Start Prometheus on a free loopback port and wait until ``/-/ready``.

    ``targets`` are ``host:port`` strings. The lifecycle API is enabled so
    ``reload()`` works.
    """
    binary = require_binary("prometheus")
    workdir = Path(workdir) / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config = render_config(
        targets, scrape_interval, rule_files, extra_scrape_configs, alertmanagers
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = ManagedProcess(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        workdir,
    )
    url = f"http://127.0.0.1:{port}"
    server = PrometheusServer(
        url=url, port=port, process=process, config_path=config_path, workdir=workdir
    )
    try:
        process.wait_ready(lambda: http_ready(f"{url}/-/ready"), timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return server
