"""Actions that take no body (resume, recheck) refuse one: a body is a client sending
what it believes is read (a reason, a role) or not JSON at all, and acting while
ignoring it records an action nobody sent as it was meant (SECURITY.md, "Input").

The API in-process on a SQLite store of its own; the served API on PostgreSQL is
tests/integration/test_api_hostile_input.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from config.settings import Settings
from controller.api.app import create_app, no_body
from controller.store.db import migrate

TOKEN = "0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NO_BODY_ACTIONS = ["/api/v1/rollouts/r-none/resume", "/api/v1/rollouts/r-none/recheck"]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    settings = Settings(database_url=url, api_tokens=f"ada:admin:{TOKEN}")
    yield TestClient(create_app(settings, enqueue_rollback=lambda rollout_id: None))


def _uses(dependant: Dependant, call: object) -> bool:
    return dependant.call is call or any(_uses(d, call) for d in dependant.dependencies)


def test_every_action_without_a_body_refuses_one(client: TestClient) -> None:
    """A new action that takes no body gets the same rule: every POST either reads a
    body or refuses one."""
    posts = [r for r in client.app.routes if isinstance(r, APIRoute) and "POST" in r.methods]
    assert len(posts) > 5
    for route in posts:
        declared = route.body_field is not None or "requestBody" in (route.openapi_extra or {})
        assert declared or _uses(route.dependant, no_body), route.path


@pytest.mark.parametrize("path", NO_BODY_ACTIONS)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "this endpoint takes no body, and this one is not even JSON: send none"),
        (b'{"reason": "rollback"}', "this endpoint takes no body: send none (or {})"),
        (b"[]", "this endpoint takes no body: send none (or {})"),
    ],
)
def test_a_body_sent_to_an_action_without_one_is_a_422(
    client: TestClient, path: str, body: bytes, message: str
) -> None:
    """Before the rule, the action was taken and the body ignored."""
    answer = client.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"detail": [{"loc": ["body"], "msg": message}]}


@pytest.mark.parametrize("path", NO_BODY_ACTIONS)
@pytest.mark.parametrize("body", [b"", b"  ", b"{}", b"null"])
def test_no_body_or_an_empty_one_is_taken(client: TestClient, path: str, body: bytes) -> None:
    """What clients send by default gets through to the action (here: no such
    rollout, 404)."""
    answer = client.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 404, answer.text


def test_a_caller_without_a_token_never_has_its_body_read(client: TestClient) -> None:
    answer = client.post(NO_BODY_ACTIONS[0], content=b"{not json")
    assert answer.status_code == 401, answer.text
