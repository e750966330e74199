"""A start the router cannot answer for: the API's 503 (retry), nothing recorded.

The API in-process on a SQLite store of its own; the router's socket does not exist,
as when HAProxy is restarting."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from config import PLANS_DIR
from config.settings import Settings
from controller.api.app import create_app
from controller.store.db import migrate

TOKEN = "0123456789abcdef0123"


def test_an_unreachable_router_is_503_with_retry_after_and_nothing_recorded(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        haproxy_socket=str(tmp_path / "absent.sock"),
        api_tokens=f"ada:admin:{TOKEN}",
    )
    client = TestClient(create_app(settings, enqueue_rollback=lambda rollout_id: None))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {
        "plan_yaml": (PLANS_DIR / "demo.yaml").read_text(),
        "service": "checkout",
        "version": "2.0.0",
        "stable": "1.0.0",
    }
    refused = client.post("/api/v1/rollouts", json=body, headers=auth)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "5"
    (problem,) = refused.json()["detail"]
    assert problem["loc"] == ["router"] and "cannot read the router" in problem["msg"]
    assert "unreachable" in problem["msg"]
    assert client.get("/api/v1/rollouts", headers=auth).json() == []
