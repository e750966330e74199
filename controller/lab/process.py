"""Run one lab server as a child process that can always be cleaned up.

Each child gets its own session (process group) so that ``stop()`` also
reaches anything it forked, and its output goes to a log file in the work
directory so a failed start can show *why* instead of just timing out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, TypeVar

import httpx

from controller.lab.errors import LabError

LOG_TAIL_LINES = 40


class ManagedProcess:
    """A started child process with its own log file and process group.

    The process is started by the constructor. ``env`` entries are layered on
    top of the current environment (callers almost always want PATH etc. kept).
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        workdir: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{name}.log"
        self._env = dict(env or {})
        self._cwd = cwd
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"--- starting: {' '.join(self.args)}\n".encode())
        self._log.flush()
        try:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(cwd) if cwd is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise LabError(f"could not start {name} ({self.args[0]}): {exc}") from exc

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the process log (empty if unreadable)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(
        self, check: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05
    ) -> None:
        """Poll ``check`` until it returns True.

        A check that raises counts as "not ready yet": servers refuse
        connections while booting and that is not an error.

        Raises:
            LabError: the process exited, or ``timeout`` passed; the message
                carries the log tail so the cause is visible in test output.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise LabError(
                    f"{self.name} exited with code {self.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if check():
                    return
            except Exception:  # any failure means "not ready yet"
                pass
            if time.monotonic() >= deadline:
                raise LabError(
                    f"{self.name} was not ready after {timeout:.1f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit code."""
        return self._popen.wait(timeout=timeout)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it if still running after ``grace``.

        Safe to call more than once and on an already dead process.
        """
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(timeout=grace)
        else:
            # The leader is gone but children it forked may linger.
            self._signal_group(signal.SIGKILL)
        self._close_log()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash or OOM kill would."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=5.0)

    def respawn(self) -> ManagedProcess:
        """A new process with the same command, settings and log file (a restart after
        ``stop()`` or ``kill()``, as a supervisor such as systemd does)."""
        return ManagedProcess(self.name, self.args, self.workdir, env=self._env, cwd=self._cwd)

    def _close_log(self) -> None:
        if not self._log.closed:
            self._log.close()

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited({self.returncode})"
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {state})"


def http_ready(url: str, timeout: float = 0.5) -> bool:
    """True if ``url`` answers a GET with a 2xx status.

    Proxy environment variables are ignored: lab servers are always local.
    """
    try:
        response = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.is_success


def tcp_ready(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Stoppable(Protocol):
    def stop(self) -> object: ...


_S = TypeVar("_S", bound=Stoppable)


class ProcessGroup:
    """Stops everything registered with it, newest first, even if some stops fail.

    Use it as a context manager so a failure halfway through starting a lab
    still cleans up the servers that did start.
    """

    def __init__(self) -> None:
        self._members: list[Stoppable] = []

    def add(self, member: _S) -> _S:
        """Register ``member`` for cleanup and return it (for one-line use)."""
        self._members.append(member)
        return member

    def replace(self, old: Stoppable, new: _S) -> _S:
        """Put ``new`` where ``old`` was (a restarted process); returns ``new``."""
        self._members = [new if member is old else member for member in self._members]
        return new

    def stop(self) -> None:
        """Stop all members in reverse start order; re-raise the first failure at the end."""
        first_error: BaseException | None = None
        while self._members:
            member = self._members.pop()
            try:
                member.stop()
            except Exception as exc:  # keep stopping the rest
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
