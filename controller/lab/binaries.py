"""Locate the server binaries the lab runs.

Debian puts some daemons in ``/usr/sbin``, which is not on every user's PATH,
so those directories are searched as well before giving up.
"""

import os
import shutil

from controller.lab.errors import MissingBinaryError

INSTALL_HINTS: dict[str, str] = {
    "prometheus": "apt-get install -y prometheus",
    "prometheus-alertmanager": "apt-get install -y prometheus-alertmanager",
    "haproxy": "apt-get install -y haproxy",
    "redis-server": "apt-get install -y redis-server",
}

_SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def install_hint(name: str) -> str:
    """The command that installs ``name`` (falls back to the same-named package)."""
    return INSTALL_HINTS.get(name, f"apt-get install -y {name}")


def require_binary(name: str) -> str:
    """Return the absolute path of executable ``name`` or explain how to install it.

    Raises:
        MissingBinaryError: nothing executable called ``name`` was found.
    """
    found = shutil.which(name)
    if found is None:
        found = shutil.which(name, path=os.pathsep.join(_SYSTEM_DIRS))
    if found is None:
        raise MissingBinaryError(
            f"{name!r} is not installed or not on PATH; install it with: {install_hint(name)}"
        )
    return os.path.abspath(found)
