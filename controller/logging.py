"""structlog set-up: JSON lines for machines, readable lines on a terminal, and no
secret ever written.

Standard-library loggers (Celery, uvicorn, Alembic) go through the same
processors, so their lines are JSON too and pass the same redaction. Redaction
masks passwords inside URLs, values under secret-sounding keys, and every secret
value the settings hold, wherever it appears in a line. The same rules
(``controller.redaction``) mask what is stored and sent: events, incidents,
notifications and task results.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import structlog

# Re-exported: the redaction rules live with ``redact``, which applies them beyond logs.
from controller.redaction import MASK, Redactor, redact, settings_secrets

__all__ = ["MASK", "Redactor", "configure_logging", "redact", "settings_secrets"]


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
