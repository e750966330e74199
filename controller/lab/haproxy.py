"""A throwaway HAProxy in front of lab services, steerable via its runtime API.

Layout: the traffic frontend (``url``) sends *every* path to the backend, so
``/metrics`` through it reaches the service like any user request. HAProxy's
own Prometheus exporter lives on a second, stats-only frontend
(``metrics_url``), which keeps proxy metrics and service metrics apart.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from controller.lab.binaries import require_binary
from controller.lab.errors import LabError
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess, tcp_ready
from controller.traffic.base import RouterError
from controller.traffic.haproxy import haproxy_command, servers_state

# sockaddr_un.sun_path is 108 bytes on Linux; deep pytest tmp dirs can exceed it.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Backend:
    """One service behind the lab's HAProxy: its servers, their first weights, and
    the port of the frontend that sends it user traffic."""

    name: str
    servers: dict[str, str]
    weights: dict[str, int]
    port: int
    check_inter: str = "1s"


def _backend_sections(backend: Backend) -> str:
    missing = [name for name in backend.servers if name not in backend.weights]
    if missing:
        raise LabError(f"no weight given for HAProxy server(s): {', '.join(missing)}")
    # fastinter: re-check quickly while a server changes state, so the first
    # check after start-up (and a crash) settles in ~100ms instead of a full inter.
    checks = f"check inter {backend.check_inter} fastinter 100ms rise 1 fall 2"
    server_lines = "\n".join(
        f"    server {name} {address} weight {backend.weights[name]} {checks}"
        for name, address in backend.servers.items()
    )
    return f"""
frontend {backend.name}_traffic
    bind 127.0.0.1:{backend.port}
    default_backend {backend.name}

backend {backend.name}
    balance roundrobin
    option httpchk GET /healthz
{server_lines}
"""


def render_config(
    backends: list[Backend], stats_port: int, socket_path: str, state_file: str
) -> str:
    """The haproxy.cfg text. Short timeouts so a dead server is noticed within seconds.

    Runtime weights survive a reload through the server-state file, as in the shipped
    config/haproxy/haproxy.cfg: save ``show servers state`` to it, then reload."""
    return f"""\
global
    stats socket {socket_path} mode 600 level admin
    stats timeout 10s
    server-state-file {state_file}

defaults
    mode http
    load-server-state-from-file global
    timeout connect 1s
    timeout client 10s
    timeout server 5s
    timeout http-request 5s
    timeout check 1s

frontend lab_stats
    bind 127.0.0.1:{stats_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
{"".join(_backend_sections(backend) for backend in backends)}"""


@dataclass
class HAProxyServer:
    """A running HAProxy owned by the lab."""

    url: str
    port: int
    stats_port: int
    metrics_url: str
    socket_path: str
    backend: str
    servers: dict[str, str]
    process: ManagedProcess
    config_path: Path
    state_file: Path
    frontends: dict[str, str] = field(default_factory=dict)  # backend -> its traffic URL
    _socket_dir: Path | None = field(default=None, repr=False)

    def command(self, command: str, timeout: float = 2.0) -> str:
        """Send one runtime API command (e.g. ``show stat``) and return the answer."""
        return haproxy_command(self.socket_path, command, timeout)

    def server_status(self, backend: str | None = None) -> dict[str, str]:
        """Health state per server of a backend (the first by default), e.g.
        ``{"stable": "UP"}``."""
        backend = backend or self.backend
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row.get("pxname") == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def weights(self) -> dict[str, dict[str, int]]:
        """The runtime weight of every server of every backend, in one command:
        ``{backend: {server: weight}}``."""
        found: dict[str, dict[str, int]] = {}
        for row in servers_state(str(self.socket_path)):
            found.setdefault(row["be_name"], {})[row["srv_name"]] = int(row["srv_uweight"])
        return found

    def wait_servers_up(self, names: Iterable[str] | None = None, timeout: float = 10.0) -> None:
        """Block until the named servers (all by default) pass their health check,
        weight aside. A redeploy waits for its own server only: the other slot may be
        down on purpose (a rollback's runbook disables the canary)."""
        wanted = set(names) if names is not None else set(self.servers)
        deadline = time.monotonic() + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            status = {name: state for name, state in self.server_status().items() if name in wanted}
            # "UP 1/2" is still a transition; only a settled "UP" counts.
            if set(status) == wanted and all(s in ("UP", "no check") for s in status.values()):
                return
            time.sleep(0.1)
        raise LabError(f"HAProxy servers {sorted(wanted)} not all UP after {timeout}s: {status}")

    def save_state(self) -> None:
        """What the documented reload procedure does first: write the runtime state
        (weights included) to the server-state file."""
        self.state_file.write_text(self.command("show servers state"))

    def reload(self, keep_state: bool = True, timeout: float = 15.0) -> None:
        """Reload the config: a new HAProxy on the same ports and socket. Without
        ``keep_state`` (the state file not saved first) runtime weights go back to
        the config's, as with a careless reload in production."""
        if keep_state:
            self.save_state()
        else:
            self.state_file.unlink(missing_ok=True)
        self.process.stop()
        self.process = ManagedProcess("haproxy", self.process.args, self.config_path.parent)
        self.process.wait_ready(
            lambda: tcp_ready("127.0.0.1", self.port) and _runtime_api_ready(self.socket_path),
            timeout=timeout,
        )

    def stop(self) -> None:
        self.process.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def _socket_location(workdir: Path) -> tuple[str, Path | None]:
    """Socket path in the workdir, or in a short temp dir if the workdir is too deep."""
    path = workdir / "haproxy.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return str(path), None
    short_dir = Path(tempfile.mkdtemp(prefix="lab-haproxy-"))
    return str(short_dir / "haproxy.sock"), short_dir


def _runtime_api_ready(socket_path: str) -> bool:
    try:
        return "Name: HAProxy" in haproxy_command(socket_path, "show info", timeout=0.5)
    except RouterError:
        return False


def start_haproxy(
    workdir: Path,
    backend: str,
    servers: dict[str, str],
    weights: dict[str, int],
    timeout: float = 15.0,
) -> HAProxyServer:
    """Start HAProxy in the foreground on free loopback ports, for one service.

    ``servers`` maps server name to ``host:port``; ``weights`` gives each its
    initial weight (0 means it gets no traffic until changed at runtime).
    Returns once the traffic port and the runtime API both answer; call
    ``wait_servers_up()`` if the test needs health checks to have passed.
    """
    return start_haproxy_backends(workdir, [(backend, servers, weights)], timeout)


def start_haproxy_backends(
    workdir: Path,
    backends: list[tuple[str, dict[str, str], dict[str, int]]],
    timeout: float = 15.0,
    check_inter: str = "1s",
) -> HAProxyServer:
    """One HAProxy for many services: ``(backend, servers, weights)`` each, each with
    a frontend on a port of its own (``frontends``). ``url``, ``backend`` and
    ``servers`` describe the first. ``check_inter``: how often each server's health
    is checked (a thousand services checked every second is a load of its own)."""
    binary = require_binary("haproxy")
    workdir = Path(workdir) / "haproxy"
    workdir.mkdir(parents=True, exist_ok=True)
    socket_path, socket_dir = _socket_location(workdir)
    specs = [
        Backend(name, dict(srv), dict(w), free_port(), check_inter) for name, srv, w in backends
    ]
    stats_port = free_port()
    config_path = workdir / "haproxy.cfg"
    state_file = workdir / "server-state"
    config_path.write_text(render_config(specs, stats_port, socket_path, str(state_file)))
    process = ManagedProcess("haproxy", [binary, "-f", str(config_path), "-db"], workdir)
    first = specs[0]
    server = HAProxyServer(
        url=f"http://127.0.0.1:{first.port}",
        port=first.port,
        stats_port=stats_port,
        metrics_url=f"http://127.0.0.1:{stats_port}/metrics",
        socket_path=socket_path,
        backend=first.name,
        servers=first.servers,
        process=process,
        config_path=config_path,
        state_file=state_file,
        frontends={spec.name: f"http://127.0.0.1:{spec.port}" for spec in specs},
        _socket_dir=socket_dir,
    )
    try:
        process.wait_ready(
            lambda: tcp_ready("127.0.0.1", first.port) and _runtime_api_ready(socket_path),
            timeout=timeout,
        )
    except BaseException:
        server.stop()
        raise
    return server
