"""Plan hooks: a command or an HTTP call that acts on a deployment (disable the
canary, redeploy the stable slot). They report, never raise: a hook that cannot run
is a failed hook, recorded as such."""

from __future__ import annotations

import subprocess

from controller import timeouts
from controller.commands import command_environment
from controller.guarded_network import plan_client
from controller.plan import CanaryDisable, render_template


def hook_seconds(hook: CanaryDisable) -> float:
    """The longest ``hook`` can take: an HTTP call's timeout, or a command's."""
    if hook.http is not None:
        return hook.http.timeout.total_seconds()
    return hook.timeout.total_seconds()


def run_hook(hook: CanaryDisable, values: dict[str, str]) -> tuple[bool, str]:
    """Run ``hook`` with the rollout's template values; ``(ok, what happened)``."""
    if hook.command is not None:
        argv = [render_template(arg, values) for arg in hook.command]
        try:
            done = subprocess.run(
                argv,
                env=command_environment(),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=hook.timeout.total_seconds(),
                check=False,
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return False, f"command {argv[0]!r} failed: {exc}"
        tail = (done.stdout + done.stderr).strip()[-300:]
        return done.returncode == 0, f"command {argv[0]!r} exited {done.returncode}: {tail}"
    assert hook.http is not None
    url = render_template(hook.http.url, values)
    try:
        with plan_client(timeout=hook.http.timeout.total_seconds()) as client:
            response = client.request(hook.http.method, url, json=hook.http.json_body)
    except timeouts.out_of_time():
        raise  # the task's time is up: not a failed hook (controller.timeouts)
    except Exception as exc:  # an unusable URL (InvalidURL) fails the hook too
        return False, f"{hook.http.method} {url}: {type(exc).__name__}: {exc}"
    return response.is_success, f"{hook.http.method} {url}: {response.status_code}"
