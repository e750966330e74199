"""The CLI's way to act through the API with a token (``CANARY_API_URL`` and
``CANARY_TOKEN``), so that what it records is the token's identity and role, checked
by the API, and not a login name on whatever machine the CLI runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class ApiRefused(Exception):
    """The API answered with an error; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class ApiUnavailable(Exception):
    """The API could not be reached or failed (5xx)."""


@dataclass(frozen=True)
class ApiClient:
    url: str
    token: str
    timeout_seconds: float = 15.0

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of a 2xx response; a 409 carrying an outcome is returned
        too (the action was refused by the rollout's state, which is an answer)."""
        try:
            response = httpx.request(
                method,
                self.url.rstrip("/") + path,
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.timeout_seconds,
            )
        except httpx.HTTPError as exc:
            raise ApiUnavailable(
                f"cannot reach the API at {self.url}: {type(exc).__name__}"
            ) from None
        if response.status_code >= 500:
            raise ApiUnavailable(f"the API answered {response.status_code}: {_detail(response)}")
        if response.status_code == 409 and _is_outcome(response):
            return response.json()
        if response.status_code >= 400:
            raise ApiRefused(response.status_code, _detail(response))
        return response.json()


def _is_outcome(response: httpx.Response) -> bool:
    try:
        return "accepted" in response.json()
    except ValueError:
        return False


def _detail(response: httpx.Response) -> str:
    """The API's error as one line: ``field: problem; field: problem``."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}"
            for item in detail
            if isinstance(item, dict)
        )
    return str(detail)
