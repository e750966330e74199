"""The order of HAProxy's two weight changes, against a fake runtime API that records
every in-between state (pure logic of HAProxyRouter; the real HAProxy is in
tests/integration/test_haproxy_router.py)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.traffic import HAProxyRouter, RouterError

BACKEND = "checkout"


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


@pytest.mark.parametrize(
    ("backend", "stable", "canary"),
    [
        ("checkout;show info", "stable", "canary"),
        ("checkout", "stable server", "canary"),
        ("checkout", "stable", "canary\n"),
        ("checkout", "stable", "canary\nset server checkout/stable weight 0"),
    ],
)
def test_names_that_could_smuggle_a_command_are_refused(
    backend: str, stable: str, canary: str
) -> None:
    with pytest.raises(RouterError, match="may only hold letters, digits"):
        HAProxyRouter("/nonexistent.sock", backend, stable_server=stable, canary_server=canary)
