"""Masking secrets in anything the controller writes down or sends out.

Plans carry URLs (hooks, checks) that may hold passwords or tokens, and commands
and hooks answer with text that may quote them. Log lines go through a
``Redactor`` as a structlog processor (``controller.logging``); everything else
that leaves the process or is stored for people to read (events, incidents,
notifications, task results) goes through ``redact``, which uses the same rules
and every secret value the settings hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")

# The user name may be empty: redis://:password@host is how Redis URLs carry one.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
_SECRET_WORDS = r"(password|passwd|secret|token|authorization|credential|api_?key)"
_SECRET_KEYS = re.compile(_SECRET_WORDS, re.IGNORECASE)
# ?access_token=..., &api_key=... in a URL, and "Bearer ..." in a message.
_SECRET_QUERY = re.compile(
    rf"(?P<head>[?&][A-Za-z_]*{_SECRET_WORDS}[A-Za-z_]*=)[^&\s#\"']+", re.IGNORECASE
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[^\s\"',]+", re.IGNORECASE)
# What each of the three patterns above cannot match without: "@" (a password in a
# URL), "=" (a secret query parameter), "bearer" (any case).
_MAY_HOLD_SECRET = re.compile(r"[@=]|bearer", re.IGNORECASE)
MASK = "***"


class Redactor:
    """A structlog processor that masks secrets in every value of a log line."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            # Each pattern needs a character or word most values lack: one scan for
            # them spares three substitutions on every number and verdict stored.
            if _MAY_HOLD_SECRET.search(value):
                value = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", value)
                value = _SECRET_QUERY.sub(rf"\g<head>{MASK}", value)
                value = _BEARER.sub(rf"\g<head>{MASK}", value)
            for secret in self.secrets:
                value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {
                k: MASK if isinstance(k, str) and _SECRET_KEYS.search(k) and v else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        return self.scrub(event_dict)


def settings_secrets() -> list[str]:
    """Every secret value in the settings: tokens, passwords, passwords inside URLs."""
    from config.settings import get_settings

    settings = get_settings()
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if not isinstance(text, str):
            continue
        if hasattr(value, "get_secret_value"):
            found.append(text)
            # name:role:token lists: the token is everything after the second colon.
            found += [part.split(":", 2)[2] for part in text.split(",") if part.count(":") >= 2]
        match = re.search(r"://[^:/@\s]*:([^@\s/]+)@", text)
        if match:
            found.append(match.group(1))
    return found


@lru_cache(maxsize=1)
def shared_redactor() -> Redactor:
    """The process's redactor, built on first use: the settings are read once, not on
    every event written.

    Settings that cannot be loaded must not turn recording an event or sending a
    notification into a crash, so they leave the pattern rules (URL passwords,
    token query parameters, bearer values, secret-sounding keys) in force."""
    try:
        secrets = settings_secrets()
    except Exception:  # invalid or unreadable settings: patterns only
        secrets = []
    return Redactor(secrets)


def reset_redaction_cache() -> None:
    """Forget the cached redactor, so that the next ``redact`` reads the settings again
    (after tests change the environment and clear ``get_settings``)."""
    shared_redactor.cache_clear()


def redact(value: T) -> T:
    """``value`` with every secret masked: strings, and dicts, lists and tuples of them
    at any depth (values under secret-sounding keys become ``MASK``); other values
    come back as they are. The shape is kept, so stored JSON stays readable."""
    return shared_redactor().scrub(value)
