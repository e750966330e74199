"""Posting incidents to the team's incident tool: one JSON document, one webhook."""

from __future__ import annotations

import time
from typing import Any

import httpx

from controller.redaction import redact

ATTEMPTS = 3
BACKOFF_SECONDS = 0.5  # doubles: the whole post stays well inside the runbook task


def post_incident(url: str | None, token: str | None, document: dict[str, Any]) -> str:
    """Post to the incident webhook; return what happened, never raise.

    Connection errors and 5xx answers are tried again (the incident tool may be
    restarting); a 4xx is the tool refusing the document, and trying again would
    not change its mind. The document is masked here too, the last point before it
    leaves: whoever built it, no secret reaches the incident tool."""
    if not url:
        return "no incident webhook configured"
    document = redact(document)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    outcome = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = httpx.post(url, json=document, headers=headers, timeout=5, trust_env=False)
        except Exception as exc:  # refused, timed out or an unusable URL
            outcome = f"failed: {type(exc).__name__}"
        else:
            if response.is_success:
                return f"posted: HTTP {response.status_code}"
            outcome = f"failed: HTTP {response.status_code}"
            if response.status_code < 500:
                break
        if attempt < ATTEMPTS:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    return f"{outcome} after {attempt} attempt(s)"
