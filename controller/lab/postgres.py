"""A PostgreSQL of the lab's own, for runs that restart the store.

The machine's PostgreSQL is shared (the tests' schemas live in it), so a benchmark
that restarts the store under the controller starts a cluster it may stop: initdb
into the work directory, a free loopback port. PostgreSQL refuses to run as root;
as root the cluster runs as the ``postgres`` system user. Durability is traded for
speed (fsync off): the lab's data is thrown away with it.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from controller.lab.binaries import require_binary
from controller.lab.errors import LabError, MissingBinaryError
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess, tcp_ready

SYSTEM_USER = "postgres"


def postgres_binary(name: str) -> str:
    """``initdb``, ``postgres`` or ``pg_ctl``: Debian keeps them out of PATH, in
    /usr/lib/postgresql/<major>/bin (the newest major wins)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major)
    if found:
        return found[-1]
    try:
        return require_binary(name)
    except MissingBinaryError:
        raise MissingBinaryError(
            f"{name!r} is not installed; install it with: apt-get install -y postgresql"
        ) from None


def _major(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


def _as_postgres_user() -> list[str]:
    """The command prefix that drops root to the postgres user; none for others."""
    if os.geteuid() != 0:
        return []
    return [require_binary("runuser"), "-u", SYSTEM_USER, "--"]


@dataclass
class PostgresServer:
    """A running cluster owned by the lab; ``url`` reaches its ``postgres`` database."""

    datadir: Path
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{SYSTEM_USER}@127.0.0.1:{self.port}/postgres"

    def restart(self, timeout: float = 30.0) -> None:
        """A fast shutdown (open sessions cut, as by ``systemctl restart``), then the
        same cluster again on the same port."""
        self._pg_ctl_stop()
        self.process.wait(timeout=timeout)
        self.process.stop()
        self.process = self.process.respawn()
        self._wait_ready(timeout)

    def stop(self) -> None:
        if self.process.alive:
            self._pg_ctl_stop()
        self.process.stop()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def _pg_ctl_stop(self) -> None:
        subprocess.run(
            [*_as_postgres_user(), postgres_binary("pg_ctl"), "stop", "-D", str(self.datadir)]
            + ["-m", "fast", "-w", "-t", "30"],
            check=False,
            capture_output=True,
            timeout=40,
        )

    def _wait_ready(self, timeout: float) -> None:
        isready = postgres_binary("pg_isready")
        self.process.wait_ready(
            lambda: (
                tcp_ready("127.0.0.1", self.port)
                and subprocess.run(
                    [isready, "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
                ).returncode
                == 0
            ),
            timeout=timeout,
            interval=0.2,
        )


def start_postgres(workdir: Path, timeout: float = 60.0) -> PostgresServer:
    """initdb a cluster under ``workdir`` (trust auth on loopback) and start it."""
    prefix = _as_postgres_user()
    logs = Path(workdir) / "postgres"
    if prefix:
        # The postgres user cannot enter a root-owned work dir (pytest's are 0700):
        # the cluster lives in a temp dir of its own, removed by stop().
        base = Path(tempfile.mkdtemp(prefix="lab-postgres-"))
        shutil.chown(base, SYSTEM_USER, SYSTEM_USER)
    else:
        base = logs
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
    datadir = base / "data"
    initdb = subprocess.run(
        [*prefix, postgres_binary("initdb"), "-D", str(datadir), "-U", SYSTEM_USER]
        + ["--auth=trust", "--encoding=UTF8", "--no-sync"],
        capture_output=True,
        text=True,
        check=False,
    )
    if initdb.returncode != 0:
        raise LabError(f"initdb failed ({initdb.returncode}): {initdb.stderr.strip()}")
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(base),
        "max_connections": "300",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    args = [*prefix, postgres_binary("postgres"), "-D", str(datadir)]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    server = PostgresServer(datadir, port, ManagedProcess("postgres", args, logs))
    try:
        server._wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def own_schema(admin_url: str, prefix: str = "canary") -> Iterator[str]:
    """A URL into a fresh, empty schema of the PostgreSQL at ``admin_url`` (through
    ``search_path``), dropped afterwards: a test or a benchmark sees only its own rows
    and leaves nothing in a shared database."""
    schema = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except BaseException:
        admin.dispose()
        raise
    separator = "&" if "?" in admin_url else "?"
    try:
        yield f"{admin_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
