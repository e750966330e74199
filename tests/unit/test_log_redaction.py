"""No secret reaches a log line: URL passwords, secret-sounding keys, known values."""

from __future__ import annotations

import json
import logging

import structlog

from controller.logging import MASK, Redactor, configure_logging


def test_masks_passwords_inside_urls() -> None:
    redact = Redactor()
    line = redact.scrub("connect postgresql+psycopg://canary:s3cr3t@db:5432/x failed")
    assert "s3cr3t" not in line and f"canary:{MASK}@db" in line


def test_masks_secret_keys_and_known_values_everywhere() -> None:
    redact = Redactor(["tok-0123456789abcdef"])
    event = redact.scrub(
        {
            "event": "call",
            "authorization": "Bearer xyz",
            "api_key": "k",
            "nested": {"password": "p", "note": "sent tok-0123456789abcdef"},
            "items": ["tok-0123456789abcdef"],
            "count": 3,
        }
    )
    assert event["authorization"] == MASK and event["api_key"] == MASK
    assert event["nested"] == {"password": MASK, "note": f"sent {MASK}"}
    assert event["items"] == [MASK] and event["count"] == 3


def test_standard_library_loggers_are_json_and_redacted(capsys) -> None:  # noqa: ANN001
    configure_logging(json=True, secrets=["hunter2hunter2"])
    logging.getLogger("celery.worker").warning("broker at redis://u:hunter2hunter2@h/0")
    structlog.get_logger("t").info("bound", token="abc", detail="hunter2hunter2 leaked")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["logger"] == "celery.worker" and "hunter2" not in lines[0]["event"]
    assert lines[1]["token"] == MASK and "hunter2" not in lines[1]["detail"]
