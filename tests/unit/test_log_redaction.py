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


def test_masks_url_passwords_without_a_user_query_tokens_and_bearer_headers() -> None:
    redact = Redactor()
    line = redact.scrub(
        "broker redis://:r3dispass@redis:6379/0; check GET "
        "http://svc/health?access_token=abc123&x=1&api_key=k9 said 'Bearer eyJhbGciOi.x'"
    )
    for secret in ("r3dispass", "abc123", "k9", "eyJhbGciOi"):
        assert secret not in line, line
    assert f"redis://:{MASK}@redis" in line and "x=1" in line
    assert f"access_token={MASK}" in line and f"Bearer {MASK}" in line


def test_settings_secrets_include_a_password_in_a_url_without_a_user(monkeypatch) -> None:  # noqa: ANN001
    from config.settings import get_settings
    from controller.logging import settings_secrets

    monkeypatch.setenv("CANARY_BROKER_URL", "redis://:r3dispass@redis:6379/0")
    get_settings.cache_clear()
    try:
        assert "r3dispass" in settings_secrets()
    finally:
        get_settings.cache_clear()
