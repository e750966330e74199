"""How the controller runs commands from plans (gates, smoke suites, hooks,
notifications): no shell, a bounded time, and a clean environment.

Workers hold every secret of the installation in their environment (tokens,
database passwords); a plan's command must see none of them.
"""

from __future__ import annotations

import os

SAFE_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")


def command_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a plan command runs with: a few harmless variables, plus ``extra``."""
    env = {name: os.environ[name] for name in SAFE_VARIABLES if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {**env, **(extra or {})}
