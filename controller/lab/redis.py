"""A Redis for Celery in the lab: reuse the one already running, or start our own.

Reusing a running Redis (the usual developer or CI setup on port 6379) saves a
start-up; starting our own keeps the lab usable on a bare machine and lets a
test own its data completely when asked to (``own=True``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from controller.lab.binaries import require_binary
from controller.lab.errors import LabError
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis on ``host:port`` answers PING without needing auth."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A Redis the lab can hand to Celery; ``process`` is None if we did not start it."""

    host: str
    port: int
    db: int
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    @property
    def owned(self) -> bool:
        """Whether the lab started this Redis (and will stop it)."""
        return self.process is not None

    def stop(self) -> None:
        """Stop our own Redis; a Redis we merely borrowed is left running."""
        if self.process is not None:
            self.process.stop()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop our own Redis and start it again on the same port. It keeps nothing on
        disk, so every queued message is gone: the harshest broker restart."""
        if self.process is None:
            raise LabError("this Redis was borrowed, not started by the lab: not restarting it")
        self.process.stop()
        self.process = self.process.respawn()
        self.process.wait_ready(lambda: redis_ping(self.host, self.port), timeout=timeout)


def ensure_redis(
    workdir: Path, db: int = 0, own: bool = False, timeout: float = 10.0
) -> RedisServer:
    """Return a usable Redis: the one on 127.0.0.1:6379 if it answers, else a new one.

    Args:
        workdir: where our own Redis keeps its log (it persists nothing).
        db: database number put into ``url``; pick a distinct one per use to
            avoid seeing another user's keys on a shared Redis.
        own: always start a private Redis on a free port, even if 6379 answers.
    """
    if not own and redis_ping(DEFAULT_HOST, DEFAULT_PORT):
        return RedisServer(DEFAULT_HOST, DEFAULT_PORT, db)
    binary = require_binary("redis-server")
    workdir = Path(workdir) / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = ManagedProcess(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            DEFAULT_HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        workdir,
    )
    try:
        process.wait_ready(lambda: redis_ping(DEFAULT_HOST, port), timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return RedisServer(DEFAULT_HOST, port, db, process)
