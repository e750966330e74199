"""Posting incidents to the team's incident tool: one JSON document, one webhook."""

from __future__ import annotations

from typing import Any

import httpx


def post_incident(url: str | None, token: str | None, document: dict[str, Any]) -> str:
    """Post to the incident webhook; return what happened, never raise."""
    if not url:
        return "no incident webhook configured"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(url, json=document, headers=headers, timeout=5, trust_env=False)
    except httpx.HTTPError as exc:
        return f"failed: {type(exc).__name__}"
    return (
        f"posted: HTTP {response.status_code}"
        if response.is_success
        else f"failed: HTTP {response.status_code}"
    )
