"""Traffic shifting through the HAProxy runtime API.

The backend holds two servers, stable and canary. A canary weight of ``w``
percent becomes HAProxy weights ``canary=w`` and ``stable=100-w``, so the
percentage can be read back exactly from HAProxy itself.
"""

from __future__ import annotations

import re
import socket

from controller.traffic.base import Role, RouterError, Serving

_WEIGHT_ANSWER = re.compile(r"^(\d+) \(initial \d+\)\s*$")
# HAProxy proxy and server names. Anything else could smuggle a second command
# into the runtime API, where ';' separates commands.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def haproxy_command(socket_path: str, command: str, timeout: float = 2.0) -> str:
    """Send one runtime API command and return HAProxy's answer.

    One connection per command: in non-interactive mode HAProxy answers and
    closes, which gives a clean end-of-answer marker and no session state.

    Raises:
        RouterError: the socket is missing, refused, or did not answer in time.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(command.encode() + b"\n")
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RouterError(
            f"HAProxy runtime API at {socket_path} did not answer {command!r} within {timeout}s"
        ) from exc
    except OSError as exc:
        raise RouterError(
            f"HAProxy runtime API at {socket_path} is unreachable for {command!r}: {exc}"
        ) from exc
    return b"".join(chunks).decode(errors="replace")


# ``show servers state``: srv_op_state 2 is running (health checks pass, or none);
# any srv_admin_state bit means maintenance (forced, inherited, configured, DNS
# resolution, hostname) or drain, where a server takes no new traffic.
_OP_STATES = {"0": "down (its health check fails)", "1": "starting", "3": "stopping"}
_DRAIN_BITS = 0x08 | 0x10


def servers_state(
    socket_path: str, backend: str | None = None, timeout: float = 2.0
) -> list[dict[str, str]]:
    """The rows of ``show servers state`` (one backend, or all), as column -> value.

    Raises:
        RouterError: HAProxy did not answer, or answered something else (an unknown
            backend).
    """
    command = "show servers state" + (f" {backend}" if backend else "")
    lines = haproxy_command(socket_path, command, timeout).splitlines()
    header = next((line for line in lines if line.startswith("# be_id")), None)
    if header is None:
        answer = " ".join(line.strip() for line in lines if line.strip())
        raise RouterError(f"HAProxy refused {command!r}: {answer or '<no answer>'}")
    columns = header.lstrip("# ").split()
    return [
        dict(zip(columns, line.split(), strict=False))
        for line in lines
        if line.strip() and not line.startswith("#") and not line.strip().isdigit()
    ]


def _server_problem(row: dict[str, str]) -> str | None:
    admin_state = row.get("srv_admin_state", "0")
    if not admin_state.isdigit():
        raise RouterError(f"HAProxy reports srv_admin_state {admin_state!r}, not a number")
    admin = int(admin_state)
    if admin & ~_DRAIN_BITS:
        return "in maintenance"
    if admin:
        return "draining"
    op_state = row.get("srv_op_state", "")
    if op_state != "2":
        return _OP_STATES.get(op_state, f"in operational state {op_state!r}")
    return None


def _validate_weight(weight: int) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise ValueError(f"canary weight must be an integer percent, got {weight!r}")
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be within 0..100, got {weight}")
    return weight


def _canary_share(canary: int, stable: int) -> float:
    """Fraction of traffic the canary gets; inf when nothing is routable."""
    total = canary + stable
    return canary / total if total else float("inf")


class HAProxyRouter:
    """A :class:`~controller.traffic.base.TrafficRouter` backed by one HAProxy backend."""

    def __init__(
        self,
        socket_path: str,
        backend: str,
        stable_server: str = "stable",
        canary_server: str = "canary",
        timeout: float = 2.0,
    ) -> None:
        for what, name in (
            ("backend", backend),
            ("stable server", stable_server),
            ("canary server", canary_server),
        ):
            if not _NAME.fullmatch(name):
                raise RouterError(
                    f"HAProxy {what} name {name!r} may only hold letters, digits and _ . : -"
                )
        self.socket_path = str(socket_path)
        self.backend = backend
        self.stable_server = stable_server
        self.canary_server = canary_server
        self.timeout = timeout

    def _command(self, command: str) -> str:
        return haproxy_command(self.socket_path, command, self.timeout)

    def _get_weight(self, server: str) -> int:
        command = f"get weight {self.backend}/{server}"
        answer = self._command(command)
        match = _WEIGHT_ANSWER.match(answer.strip())
        if match is None:
            raise RouterError(f"HAProxy refused {command!r}: {answer.strip() or '<no answer>'}")
        return int(match.group(1))

    def _set_weight(self, server: str, weight: int) -> None:
        command = f"set server {self.backend}/{server} weight {weight}"
        answer = self._command(command).strip()
        if answer:
            # Success is an empty answer; anything else is HAProxy explaining a refusal.
            raise RouterError(f"HAProxy refused {command!r}: {answer}")

    def server_weights(self) -> tuple[int, int]:
        """Current raw HAProxy weights as ``(canary, stable)``."""
        return self._get_weight(self.canary_server), self._get_weight(self.stable_server)

    def set_canary_weight(self, weight: int) -> None:
        """Route ``weight`` percent to the canary with two runtime API commands.

        The two servers cannot be changed atomically, so for a moment HAProxy
        runs with one new and one old weight. Of the two possible orders the
        one whose in-between state gives the canary the smaller share wins,
        and an order that would leave both weights at 0 (no server, 503s for
        everyone) never does. In practice: when lowering, and on a rollback to
        0, the canary is cut first; when raising, the stable server is lowered
        first (unless it is going to 0). Either way the canary never gets more
        than the larger of its old and new share.
        """
        new_canary = _validate_weight(weight)
        new_stable = 100 - new_canary
        old_canary, old_stable = self.server_weights()
        canary_first = (new_canary, old_stable)
        stable_first = (old_canary, new_stable)
        if _canary_share(*canary_first) <= _canary_share(*stable_first):
            self._set_weight(self.canary_server, new_canary)
            self._set_weight(self.stable_server, new_stable)
        else:
            self._set_weight(self.stable_server, new_stable)
            self._set_weight(self.canary_server, new_canary)

    def serving(self, role: Role) -> Serving:
        """Whether HAProxy would send the ``role`` server traffic now (not if its health
        check fails, it is starting, in maintenance or draining), and how long ago
        HAProxy last changed its state (``srv_time_since_last_change``)."""
        server = self.canary_server if role == "canary" else self.stable_server
        rows = servers_state(self.socket_path, self.backend, self.timeout)
        row = next((r for r in rows if r.get("srv_name") == server), None)
        if row is None:
            raise RouterError(f"HAProxy backend {self.backend} has no server {server!r}")
        problem = _server_problem(row)
        since = row.get("srv_time_since_last_change", "")
        return Serving(
            None if problem is None else f"HAProxy server {self.backend}/{server} is {problem}",
            float(since) if since.isdigit() else None,
        )

    def get_canary_weight(self) -> int:
        """The canary's share in percent, computed from the weights HAProxy reports.

        0 and 100 are exact: a canary with any weight at all reads at least 1, so a
        rollback never mistakes a sliver of canary traffic (raw weights set by hand,
        say 1 and 256) for traffic back on stable."""
        canary, stable = self.server_weights()
        if canary + stable == 0:
            raise RouterError(
                f"backend {self.backend} has weight 0 on both {self.canary_server} and "
                f"{self.stable_server}: it routes no traffic at all"
            )
        share = round(100 * canary / (canary + stable))
        if canary and not share:
            return 1
        if stable and share == 100:
            return 99
        return share

    def __repr__(self) -> str:
        return (
            f"HAProxyRouter(socket_path={self.socket_path!r}, backend={self.backend!r}, "
            f"stable={self.stable_server!r}, canary={self.canary_server!r})"
        )
