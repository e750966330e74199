"""Lifecycle notifications: tell people when a rollout starts, moves, stops or ends.

Targets are generic JSON webhooks, Slack incoming webhooks and local commands.
Notifying is a courtesy, never a step of the rollout: callers run it off the
rollback path, so a failed target is logged and reported in its outcome, and
``notify`` never raises. Each target gets a hard time budget of its own, so a
hanging receiver costs at most its ``timeout_seconds``.

A Slack hook URL is a secret while plans are stored and shown, so a target may
name an environment variable (``url_env``) instead of holding the URL, and no
outcome detail or log line ever carries a URL or an environment value. What is
sent (a reason may quote a check URL with a token) and what a command printed
are masked with ``controller.redaction`` like everything else that leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from controller.commands import command_environment
from controller.guarded_network import plan_client
from controller.notification_target import (  # re-exported: the names users import from here
    LIFECYCLE_KINDS,
    LifecycleKind,
    NotificationTarget,
    is_http_url,
)
from controller.redaction import masked_tail, redact

log = structlog.get_logger(__name__)

STDERR_CHARS = 200

# What each kind says after "<service> <version>: "; "{stable}" is the version being replaced.
_VERBS = {
    "started": "rollout from {stable} started",
    "stage_changed": "moved on",
    "paused": "paused",
    "blocked": "blocked",
    "progress_deadline": "held with canary traffic past its progress deadline: decide",
    "rolled_back": "rolled back",
    "rollback_failed": "ROLLBACK FAILED: traffic is NOT confirmed on stable",
    "succeeded": "succeeded",
}


@dataclass(frozen=True)
class LifecycleEvent:
    """What happened to a rollout, in the words every target kind needs."""

    kind: str
    rollout_id: str
    service: str
    version: str
    stable: str
    state: str
    stage: str | None
    weight: int | None
    reason: str | None
    at: datetime

    def __post_init__(self) -> None:
        # An unknown kind would silently match no target: fail where the event is built.
        if self.kind not in LIFECYCLE_KINDS:
            raise ValueError(f"unknown lifecycle kind {self.kind!r}; known: {LIFECYCLE_KINDS}")

    def text(self) -> str:
        """One human line, e.g. ``checkout 1.4.0: rolled back at canary-10 (weight 0%): ...``."""
        if self.kind == "stage_changed":
            where = f" to {self.stage}" if self.stage else " to the next stage"
        else:
            where = f" at {self.stage}" if self.stage else ""
        weight = f" (weight {self.weight}%)" if self.weight is not None else ""
        reason = f": {self.reason}" if self.reason else ""
        verb = _VERBS[self.kind].format(stable=self.stable)
        line = f"{self.service} {self.version}: {verb}{where}{weight}{reason}"
        return " ".join(line.split())  # a reason with newlines must not break the one line

    def as_json(self) -> dict[str, Any]:
        """The generic webhook body and a command's stdin: every field plus the line."""
        return {
            "kind": self.kind,
            "rollout_id": self.rollout_id,
            "service": self.service,
            "version": self.version,
            "stable": self.stable,
            "state": self.state,
            "stage": self.stage,
            "weight": self.weight,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "text": self.text(),
        }


@dataclass(frozen=True)
class NotifyOutcome:
    """How one target fared; ``detail`` is safe to log and show (no URL, no env value)."""

    target: str
    ok: bool
    detail: str


def notify(
    targets: Sequence[NotificationTarget],
    event: LifecycleEvent,
    environ: Mapping[str, str] | None = None,
) -> list[NotifyOutcome]:
    """Send ``event`` to every target subscribed to its kind, one after another.

    ``environ`` (default ``os.environ``) resolves ``url_env`` and is the base
    environment of commands. Never raises: one broken target must neither stop
    the others nor reach the caller.
    """
    env = os.environ if environ is None else environ
    outcomes: list[NotifyOutcome] = []
    for target in targets:
        if event.kind not in target.events:
            continue
        try:
            ok, detail = _deliver(target, event, env)
        except Exception as exc:  # the contract is "never raises", whatever the bug
            ok, detail = False, f"failed: {type(exc).__name__}"
        detail = redact(detail)  # a command's stderr may quote a secret
        if ok:
            log.debug("notification_sent", target=target.name, kind=target.kind, detail=detail)
        else:
            log.warning(
                "notification_failed",
                target=target.name,
                kind=target.kind,
                detail=detail,
                event_kind=event.kind,
                rollout_id=event.rollout_id,
            )
        outcomes.append(NotifyOutcome(target=target.name, ok=ok, detail=detail))
    return outcomes


def _deliver(
    target: NotificationTarget, event: LifecycleEvent, environ: Mapping[str, str]
) -> tuple[bool, str]:
    if target.kind == "command":
        return _run_command(target, event, environ)
    url = target.url
    if target.url_env is not None:
        url = environ.get(target.url_env, "").strip()
        if not url:
            return False, f"environment variable {target.url_env} is not set or empty"
        if not is_http_url(url):
            return False, f"environment variable {target.url_env} does not hold an http(s) URL"
    assert url is not None  # the model validator guarantees url or url_env
    if target.kind == "slack":
        # Masked before escaping: "&amp;token=" would no longer read as a query parameter.
        body: dict[str, Any] = {"text": _slack_escape(redact(event.text()))}
    else:
        body = _public_json(event)
    return _post_json(url, body, target.timeout_seconds)


def _public_json(event: LifecycleEvent) -> dict[str, Any]:
    """The event as sent to a webhook or a command: a reason may quote a URL with a
    password or a token (a failed check's), and receivers are outside the controller."""
    return redact(event.as_json())


def _slack_escape(text: str) -> str:
    """Slack reads ``<...>`` as links and mentions (``<!channel>``); a reason must not ping."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _post_json(url: str, body: dict[str, Any], timeout: float) -> tuple[bool, str]:
    """POST with a hard deadline of ``timeout`` seconds in total.

    httpx timeouts apply per connect / read / write, so a receiver trickling a
    byte at a time could hold the caller indefinitely; the request runs in a
    daemon thread and is abandoned at the deadline (its own per-step timeouts
    still end it soon after). Details carry exception type names only: httpx
    messages may quote the URL.
    """
    result: list[tuple[bool, str]] = []

    def send() -> None:
        try:
            with plan_client(timeout=timeout) as client:
                response = client.post(url, json=body)
            result.append((response.is_success, f"HTTP {response.status_code}"))
        except Exception as exc:  # a thread's exception is otherwise lost and read as a timeout
            result.append((False, f"failed: {type(exc).__name__}"))

    worker = threading.Thread(target=send, name="notification-post", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return False, f"failed: no answer within {timeout:g}s"
    return result[0]


def _run_command(
    target: NotificationTarget, event: LifecycleEvent, environ: Mapping[str, str]
) -> tuple[bool, str]:
    """Run the argv without a shell: the event as JSON on stdin and the key fields in env."""
    assert target.command is not None
    # ``environ`` resolves url_env; a command sees none of it (workers hold secrets).
    env = command_environment(
        {
            "CANARY_EVENT_KIND": event.kind,
            "CANARY_ROLLOUT_ID": event.rollout_id,
            "CANARY_SERVICE": event.service,
            "CANARY_STATE": event.state,
        }
    )
    try:
        done = subprocess.run(
            target.command,
            input=json.dumps(_public_json(event)),
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            timeout=target.timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"failed: no exit within {target.timeout_seconds:g}s"
    except (OSError, ValueError) as exc:
        return False, f"failed: {type(exc).__name__}"
    # Masked before it is cut (controller.redaction.masked_tail).
    stderr = " ".join(masked_tail(done.stderr).split())[-STDERR_CHARS:]
    detail = f"exit {done.returncode}" + (f": {stderr}" if stderr else "")
    return done.returncode == 0, detail


__all__ = [
    "LIFECYCLE_KINDS",
    "LifecycleEvent",
    "LifecycleKind",
    "NotificationTarget",
    "notify",
]
