"""Real servers for integration tests, started once per session where possible.

A missing binary fails the test with the install command instead of
skipping it: a silently skipped integration suite looks exactly like a green
one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from controller.lab import (
    DemoServiceProcess,
    HAProxyServer,
    MissingBinaryError,
    ProcessGroup,
    PrometheusServer,
    start_demo_service,
    start_haproxy,
    start_prometheus,
)

BACKEND = "checkout"
SERVICE = "checkout"
ENVIRONMENT = "production"
STABLE_VERSION = "1.0.0"
CANARY_VERSION = "1.1.0"

T = TypeVar("T")


def _start(start: Callable[[], T]) -> T:
    """Run a lab start function, turning a missing binary into a clear failure."""
    try:
        return start()
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)


@dataclass
class DemoPair:
    """The stable and the canary version of the demo service, both running."""

    stable: DemoServiceProcess
    canary: DemoServiceProcess

    def reset_faults(self) -> None:
        self.stable.reset_faults()
        self.canary.reset_faults()


@pytest.fixture(scope="session")
def lab_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session work dir: configs, data and one log file per lab process."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="session")
def demo_services(lab_workdir: Path) -> Iterator[DemoPair]:
    """Stable 1.0.0 and canary 1.1.0 as subprocesses, shared by the whole session."""
    with ProcessGroup() as group:
        stable = group.add(
            _start(
                lambda: start_demo_service(
                    lab_workdir, STABLE_VERSION, service=SERVICE, environment=ENVIRONMENT
                )
            )
        )
        canary = group.add(
            _start(
                lambda: start_demo_service(
                    lab_workdir, CANARY_VERSION, service=SERVICE, environment=ENVIRONMENT
                )
            )
        )
        yield DemoPair(stable=stable, canary=canary)


@pytest.fixture
def demo_pair(demo_services: DemoPair) -> Iterator[DemoPair]:
    """The shared demo services with all fault knobs at 0 before and after the test."""
    demo_services.reset_faults()
    yield demo_services
    demo_services.reset_faults()


@pytest.fixture
def haproxy(demo_pair: DemoPair, tmp_path: Path) -> Iterator[HAProxyServer]:
    """A fresh HAProxy per test in front of the pair: stable weight 100, canary weight 0."""
    server = _start(
        lambda: start_haproxy(
            tmp_path,
            BACKEND,
            servers={"stable": demo_pair.stable.address, "canary": demo_pair.canary.address},
            weights={"stable": 100, "canary": 0},
        )
    )
    try:
        server.wait_servers_up()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus(demo_services: DemoPair, lab_workdir: Path) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping both demo services every second."""
    server = _start(
        lambda: start_prometheus(
            lab_workdir, [demo_services.stable.address, demo_services.canary.address]
        )
    )
    try:
        yield server
    finally:
        server.stop()
