"""Plan hooks: a command or an HTTP call that acts on a deployment (disable the
canary, redeploy the stable slot). They report, never raise: a hook that cannot run
is a failed hook, recorded as such.

What a hook reports is recorded in events, logs and incidents that viewers read, so
it is masked here, before it is cut to length (a cut can fall inside a secret's
shape, and what is left of it no rule recognises), and a URL taken from the
environment (``url_env``) is never quoted: it is named by its variable.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

from config.settings import get_settings
from controller import timeouts
from controller.commands import command_environment
from controller.guarded_network import plan_client
from controller.plan import CanaryDisable, HttpHook, render_template
from controller.redaction import masked_tail, redact
from controller.url_policy import HostPolicy

OUTPUT_CHARS = 300


def hook_seconds(hook: CanaryDisable) -> float:
    """The longest ``hook`` can take: an HTTP call's timeout, or a command's."""
    if hook.http is not None:
        return hook.http.timeout.total_seconds()
    return hook.timeout.total_seconds()


def run_hook(
    hook: CanaryDisable, values: dict[str, str], environ: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """Run ``hook`` with the rollout's template values; ``(ok, what happened)``.
    ``environ`` (default ``os.environ``) resolves an HTTP hook's ``url_env``."""
    if hook.command is not None:
        return _run_command(hook, values)
    assert hook.http is not None
    return _call(hook.http, values, os.environ if environ is None else environ)


def _run_command(hook: CanaryDisable, values: dict[str, str]) -> tuple[bool, str]:
    assert hook.command is not None
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
        return False, masked_tail(f"command {argv[0]!r} failed: {exc}", OUTPUT_CHARS)
    tail = masked_tail((done.stdout + done.stderr).strip(), OUTPUT_CHARS)
    return done.returncode == 0, f"command {argv[0]!r} exited {done.returncode}: {tail}"


def filled(body: Any, values: dict[str, str]) -> Any:
    """``body`` with the rollout's values put into its strings' ``{{ name }}``
    templates, at any depth: where an HTTP hook names the version it deploys
    (``{{ deploy_version }}``), since its URL may come from the environment as it is.
    A name that is not a value is left as written."""
    if isinstance(body, str):
        return _TEMPLATE.sub(lambda m: values.get(m.group(1), m.group(0)), body)
    if isinstance(body, dict):
        return {key: filled(value, values) for key, value in body.items()}
    if isinstance(body, list):
        return [filled(value, values) for value in body]
    return body


_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _call(http: HttpHook, values: dict[str, str], environ: Mapping[str, str]) -> tuple[bool, str]:
    url, shown = _target(http, values, environ)
    if url is None:
        return False, f"{http.method} {shown}"
    try:
        with plan_client(timeout=http.timeout.total_seconds()) as client:
            response = client.request(http.method, url, json=filled(http.json_body, values))
    except timeouts.out_of_time():
        raise  # the task's time is up: not a failed hook (controller.timeouts)
    except Exception as exc:  # an unusable URL (InvalidURL) fails the hook too
        # httpx messages may quote the URL: an environment's URL is shown by its name.
        message = str(exc).replace(url, shown)
        return False, redact(f"{http.method} {shown}: {type(exc).__name__}: {message}")
    return response.is_success, redact(f"{http.method} {shown}: {response.status_code}")


def _target(
    http: HttpHook, values: dict[str, str], environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """The URL to call (None when there is none to call) and how records name it:
    a plan's URL as rendered (masked with the rest), an environment's URL by its
    variable.

    A URL from the environment is not known when the rollout starts, so the host
    policy the start applies to the plan's URLs (``controller.url_policy``) is applied
    here, when it is read."""
    if http.url_env is None:
        assert http.url is not None  # the model guarantees url or url_env
        url = render_template(http.url, values)
        return url, url
    name = f"${http.url_env}"
    url = environ.get(http.url_env, "").strip()
    if not url:
        return None, f"{name}: environment variable {http.url_env} is not set or empty"
    # The policy also refuses what is not an http(s) URL with a host; its messages
    # quote the URL, which is the variable's to keep.
    problem = HostPolicy.from_setting(get_settings().allowed_url_hosts).problem(url)
    if problem:
        return None, f"{name}: " + problem.replace(repr(url), name)
    return url, name
