"""HAProxyRouter against a real HAProxy, verified by counting real responses."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from controller.lab import HAProxyServer, start_haproxy
from controller.lab.ports import free_port
from controller.traffic import HAProxyRouter, RouterError, TrafficRouter
from tests.integration.conftest import BACKEND, CANARY_VERSION, STABLE_VERSION

pytestmark = pytest.mark.integration

REQUESTS = 200


def count_versions(url: str, n: int = REQUESTS) -> Counter[str]:
    """Send ``n`` user requests through HAProxy and count which version answered."""
    with httpx.Client(base_url=url, timeout=2.0, trust_env=False) as client:
        versions: Counter[str] = Counter()
        for _ in range(n):
            response = client.get("/checkout")
            assert response.status_code == 200, response.text
            versions[response.json()["version"]] += 1
    return versions


@pytest.fixture
def router(haproxy: HAProxyServer) -> HAProxyRouter:
    return HAProxyRouter(haproxy.socket_path, haproxy.backend)


def test_satisfies_the_router_protocol(router: HAProxyRouter) -> None:
    assert isinstance(router, TrafficRouter)


def test_starts_with_no_canary_traffic(router: HAProxyRouter, haproxy: HAProxyServer) -> None:
    assert router.get_canary_weight() == 0
    assert count_versions(haproxy.url) == {STABLE_VERSION: REQUESTS}


@pytest.mark.parametrize(
    ("weight", "low", "high"),
    [(0, 0, 0), (25, 30, 70), (50, 80, 120), (100, REQUESTS, REQUESTS)],
)
def test_weight_moves_real_traffic(
    router: HAProxyRouter, haproxy: HAProxyServer, weight: int, low: int, high: int
) -> None:
    router.set_canary_weight(weight)
    assert router.get_canary_weight() == weight
    assert router.server_weights() == (weight, 100 - weight)
    versions = count_versions(haproxy.url)
    assert sum(versions.values()) == REQUESTS
    assert low <= versions[CANARY_VERSION] <= high, versions


def test_full_rollout_and_rollback_sequence(router: HAProxyRouter, haproxy: HAProxyServer) -> None:
    for weight in (10, 25, 50, 100, 50, 0):
        router.set_canary_weight(weight)
        assert router.get_canary_weight() == weight
    assert count_versions(haproxy.url, 50) == {STABLE_VERSION: 50}


def test_setting_the_same_weight_twice_is_idempotent(router: HAProxyRouter) -> None:
    router.set_canary_weight(25)
    router.set_canary_weight(25)
    assert router.server_weights() == (25, 75)


def test_unknown_backend_is_a_router_error(haproxy: HAProxyServer) -> None:
    router = HAProxyRouter(haproxy.socket_path, "no-such-backend")
    with pytest.raises(RouterError, match="No such backend"):
        router.get_canary_weight()
    with pytest.raises(RouterError, match="No such backend"):
        router.set_canary_weight(10)


def test_unknown_server_is_a_router_error(haproxy: HAProxyServer) -> None:
    router = HAProxyRouter(haproxy.socket_path, haproxy.backend, canary_server="green")
    with pytest.raises(RouterError, match="No such server"):
        router.get_canary_weight()
    with pytest.raises(RouterError, match="No such server"):
        router.set_canary_weight(10)


def test_missing_socket_is_a_router_error(tmp_path: Path) -> None:
    router = HAProxyRouter(str(tmp_path / "absent.sock"), BACKEND)
    with pytest.raises(RouterError, match="unreachable"):
        router.get_canary_weight()
    with pytest.raises(RouterError, match="unreachable"):
        router.set_canary_weight(0)


@pytest.mark.parametrize("weight", [101, -1, 25.0, True, "25"])
def test_invalid_weight_is_rejected_before_touching_haproxy(
    router: HAProxyRouter, weight: object
) -> None:
    with pytest.raises(ValueError):
        router.set_canary_weight(weight)  # type: ignore[arg-type]
    assert router.server_weights() == (0, 100)


def test_both_weights_zero_reads_as_an_error(router: HAProxyRouter, haproxy: HAProxyServer) -> None:
    assert haproxy.command(f"set server {BACKEND}/stable weight 0").strip() == ""
    with pytest.raises(RouterError, match="routes no traffic"):
        router.get_canary_weight()


def test_a_sliver_of_canary_traffic_never_reads_as_zero(
    router: HAProxyRouter, haproxy: HAProxyServer
) -> None:
    # Raw weights set by hand: the canary gets 1/257 of requests, which rounds to 0 %.
    assert haproxy.command(f"set server {BACKEND}/canary weight 1").strip() == ""
    assert haproxy.command(f"set server {BACKEND}/stable weight 256").strip() == ""
    assert router.get_canary_weight() == 1
    router.set_canary_weight(0)
    assert router.server_weights() == (0, 100) and router.get_canary_weight() == 0


def test_a_server_up_and_in_rotation_can_take_traffic(router: HAProxyRouter) -> None:
    assert router.serving("stable").problem is None
    assert router.serving("canary").problem is None  # weight 0 is a share, not a state
    assert router.serving("canary").unchanged_for is not None  # HAProxy reports it


@pytest.mark.parametrize(("state", "problem"), [("maint", "in maintenance"), ("drain", "draining")])
def test_maintenance_and_drain_are_named(
    router: HAProxyRouter, haproxy: HAProxyServer, state: str, problem: str
) -> None:
    assert haproxy.command(f"set server {BACKEND}/canary state {state}").strip() == ""
    canary = router.serving("canary")
    assert canary.problem == f"HAProxy server {BACKEND}/canary is {problem}"
    assert canary.unchanged_for is not None and canary.unchanged_for < 10  # just changed
    assert router.serving("stable").problem is None


def test_a_server_whose_health_check_fails_is_down(tmp_path: Path) -> None:
    """The canary's address has nothing listening: HAProxy's check marks it DOWN."""
    server = start_haproxy(
        tmp_path,
        BACKEND,
        servers={"stable": f"127.0.0.1:{free_port()}", "canary": f"127.0.0.1:{free_port()}"},
        weights={"stable": 100, "canary": 0},
    )
    try:
        router = HAProxyRouter(server.socket_path, BACKEND)
        deadline = time.monotonic() + 10
        while server.server_status().get("canary") != "DOWN" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert router.serving("canary").problem == (
            f"HAProxy server {BACKEND}/canary is down (its health check fails)"
        )
    finally:
        server.stop()


def test_asking_about_an_unknown_backend_or_server_is_a_router_error(
    haproxy: HAProxyServer,
) -> None:
    with pytest.raises(RouterError, match="Can't find backend"):
        HAProxyRouter(haproxy.socket_path, "no-such-backend").serving("stable")
    with pytest.raises(RouterError, match="has no server 'green'"):
        HAProxyRouter(haproxy.socket_path, BACKEND, canary_server="green").serving("canary")
