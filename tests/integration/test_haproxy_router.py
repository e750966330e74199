"""HAProxyRouter against a real HAProxy, verified by counting real responses."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.lab import HAProxyServer
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


class FakeRuntimeAPI:
    """Just enough of HAProxy's runtime API to record every intermediate weight state."""

    def __init__(self, canary: int, stable: int) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="fake-hap-"))
        self.socket_path = str(self._dir / "api.sock")
        self.weights = {"canary": canary, "stable": stable}
        self.states: list[tuple[int, int]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.socket_path)
        self._sock.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, command: str) -> str:
        words = command.split()
        server = words[2].split("/")[1] if words[0] == "set" else words[2].split("/")[1]
        if words[0] == "get":
            return f"{self.weights[server]} (initial 0)\n\n"
        self.weights[server] = int(words[4])
        self.states.append((self.weights["canary"], self.weights["stable"]))
        return "\n"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                command = conn.recv(4096).decode().strip()
                conn.sendall(self._answer(command).encode())

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def fake_api() -> Iterator[FakeRuntimeAPI]:
    api = FakeRuntimeAPI(canary=0, stable=100)
    yield api
    api.close()


def _share(canary: int, stable: int) -> float:
    assert canary + stable > 0, "an in-between state routed no traffic at all"
    return canary / (canary + stable)


def test_shift_order_never_overexposes_the_canary_or_routes_nowhere(
    fake_api: FakeRuntimeAPI,
) -> None:
    router = HAProxyRouter(fake_api.socket_path, BACKEND)
    previous = 0
    for weight in (5, 25, 50, 100, 25, 100, 0, 100, 50, 0):
        fake_api.states.clear()
        router.set_canary_weight(weight)
        assert fake_api.states[-1] == (weight, 100 - weight)
        for state in fake_api.states:
            assert _share(*state) <= max(previous, weight) / 100 + 1e-9, (previous, weight, state)
        previous = weight


def test_rollback_cuts_the_canary_first(fake_api: FakeRuntimeAPI) -> None:
    router = HAProxyRouter(fake_api.socket_path, BACKEND)
    router.set_canary_weight(50)
    fake_api.states.clear()
    router.set_canary_weight(0)
    assert fake_api.states == [(0, 50), (0, 100)]
