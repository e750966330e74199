"""Run the demo service as a real subprocess, the way the canary demo and tests need it.

A subprocess (rather than a thread) so that it can be killed, so its metrics
registry is truly separate, and so HAProxy and Prometheus see it exactly as
they would see a deployed service.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import controller
from controller.lab.errors import LabError
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess, http_ready

# The project may run from a checkout without being installed; the child must
# still be able to import ``controller``.
PROJECT_ROOT = Path(controller.__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """Settings for a demo child process: the project importable, output unbuffered."""
    inherited = os.environ.get("PYTHONPATH")
    pythonpath = os.pathsep.join(filter(None, [str(PROJECT_ROOT), inherited]))
    return {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}


@dataclass
class DemoServiceProcess:
    """One running demo service version and a client for its fault knobs."""

    service: str
    version: str
    environment: str
    host: str
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port``, the form HAProxy servers and Prometheus targets use."""
        return f"{self.host}:{self.port}"

    def get_faults(self) -> dict[str, float]:
        response = httpx.get(f"{self.url}/admin/faults", timeout=2.0, trust_env=False)
        response.raise_for_status()
        result: dict[str, float] = response.json()
        return result

    def set_faults(self, **knobs: float) -> dict[str, float]:
        """Replace all fault knobs (omitted ones go back to 0) and return the new state.

        Raises:
            LabError: the service rejected the knobs.
        """
        response = httpx.put(f"{self.url}/admin/faults", json=knobs, timeout=2.0, trust_env=False)
        if response.status_code != 200:
            raise LabError(f"{self.version} rejected fault knobs {knobs}: {response.text}")
        result: dict[str, float] = response.json()
        return result

    def reset_faults(self) -> None:
        self.set_faults()

    def stop(self) -> None:
        self.process.stop()


def start_demo_service(
    workdir: Path,
    version: str,
    service: str = "checkout",
    environment: str = "production",
    port: int | None = None,
    faults: dict[str, Any] | None = None,
    timeout: float = 15.0,
    lazy_series: bool = False,
    warmup_seconds: float = 0.0,
) -> DemoServiceProcess:
    """Start ``python -m controller.demo.service`` and wait until ``/healthz`` answers
    (after ``warmup_seconds``, during which only ``/version`` and requests answer)."""
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "controller.demo.service",
        f"--port={port}",
        f"--service={service}",
        f"--version={version}",
        f"--environment={environment}",
    ]
    if lazy_series:
        args.append("--lazy-series")
    if warmup_seconds:
        args.append(f"--warmup={warmup_seconds}")
    for knob, value in (faults or {}).items():
        args.append(f"--{knob.replace('_', '-')}={value}")
    process = ManagedProcess(
        f"demo-{service}-{version}", args, workdir, env=child_env(), cwd=PROJECT_ROOT
    )
    demo = DemoServiceProcess(service, version, environment, "127.0.0.1", port, process)
    try:
        process.wait_ready(
            lambda: http_ready(f"{demo.url}/healthz"), timeout=timeout + warmup_seconds
        )
    except BaseException:
        process.stop()
        raise
    return demo
