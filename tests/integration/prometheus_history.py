"""A real Prometheus serving fixed history: OpenMetrics backfilled with promtool.

History is written as OpenMetrics, turned into TSDB blocks by ``promtool tsdb
create-blocks-from openmetrics`` and served by a Prometheus with no scrape targets,
so every number a query returns is known in advance.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y prometheus")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrometheusProcess:
    """A Prometheus we started; ``stop`` is safe to call twice."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_prometheus(workdir: Path, storage: Path, ready_within: float = 30.0) -> PrometheusProcess:
    """Start Prometheus on a free loopback port, serving ``storage``, and wait for ready."""
    binary = _binary("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    for _ in range(3):  # the free port can be taken between probing and binding
        port = _free_port()
        log_path = workdir / f"prometheus-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={storage}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    # Backfilled blocks older than retention would be deleted on start.
                    "--storage.tsdb.retention.time=365d",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        prom = PrometheusProcess(process, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"{prom.url}/-/ready", timeout=1).status_code == 200:
                    return prom
            except requests.RequestException:
                pass
            time.sleep(0.1)
        prom.stop()
        if "address already in use" not in log_path.read_text(errors="replace"):
            break
    pytest.fail(f"Prometheus did not become ready:\n{_log_tail(log_path)}")


def backfill(workdir: Path, openmetrics: str) -> Path:
    """Write ``openmetrics`` to a file and build TSDB blocks from it with promtool."""
    source = workdir / "history.om"
    source.write_text(openmetrics)
    storage = workdir / "tsdb"
    result = subprocess.run(
        [_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", source, storage],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"promtool failed:\n{result.stdout}\n{result.stderr}"
    return storage
