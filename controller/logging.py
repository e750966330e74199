"""structlog set-up: JSON lines for machines, readable lines on a terminal, and no
secret ever written.

Standard-library loggers (Celery, uvicorn, Alembic) go through the same
processors, so their lines are JSON too and pass the same redaction. Redaction
masks passwords inside URLs, values under secret-sounding keys, and every secret
value the settings hold, wherever it appears in a line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import structlog

# The user name may be empty: redis://:password@host is how Redis URLs carry one.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
_SECRET_WORDS = r"(password|passwd|secret|token|authorization|credential|api_?key)"
_SECRET_KEYS = re.compile(_SECRET_WORDS, re.IGNORECASE)
# ?access_token=..., &api_key=... in a URL, and "Bearer ..." in a message.
_SECRET_QUERY = re.compile(
    rf"(?P<head>[?&][A-Za-z_]*{_SECRET_WORDS}[A-Za-z_]*=)[^&\s#\"']+", re.IGNORECASE
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[^\s\"',]+", re.IGNORECASE)
MASK = "***"


class Redactor:
    """A structlog processor that masks secrets in every value of a log line."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
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


def configure_logging(
    json: bool | None = None, level: int = logging.INFO, secrets: Iterable[str] | None = None
) -> None:
    """Configure structlog and the standard library once per process."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    redactor = Redactor(settings_secrets() if secrets is None else secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These report every migration check and every HTTP request at INFO; only their
    # problems matter here.
    for chatty in ("alembic", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
