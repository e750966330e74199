"""A real Alertmanager for the lab, posting to the controller's webhook.

It routes every alert at once (``group_wait: 0s``) to one webhook receiver that
authenticates with a bearer token, as production would through
``http_config.authorization``. It binds only its web port on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.lab.binaries import require_binary
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess, http_ready


@dataclass
class AlertmanagerServer:
    url: str
    port: int
    process: ManagedProcess

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def render_config(webhook_url: str, token: str) -> dict:
    return {
        "route": {
            "receiver": "canary-controller",
            "group_by": ["alertname", "service", "version"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "canary-controller",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": token}},
                    }
                ],
            }
        ],
    }


def start_alertmanager(
    workdir: Path, webhook_url: str, token: str, timeout: float = 20.0
) -> AlertmanagerServer:
    binary = require_binary("prometheus-alertmanager")
    workdir = Path(workdir) / "alertmanager"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(yaml.safe_dump(render_config(webhook_url, token), sort_keys=False))
    config.chmod(0o600)  # it holds the webhook's token
    port = free_port()
    process = ManagedProcess(
        "alertmanager",
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        workdir,
    )
    server = AlertmanagerServer(f"http://127.0.0.1:{port}", port, process)
    try:
        process.wait_ready(lambda: http_ready(f"{server.url}/-/ready"), timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return server
