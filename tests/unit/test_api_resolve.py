"""``POST /api/v1/rollouts/{id}/resolve`` by role: a viewer may not, an operator may
once the router reads traffic on stable, and ending a rollback the controller could
not confirm (``force``) takes an admin.

The API in-process on a SQLite store of its own; the router is the unit tests' fake
(the API builds its routers from the settings, replaced here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from config.settings import Settings
from controller.api import app as api_app
from controller.api.app import create_app
from controller.traffic.base import RouterError
from tests.unit.test_resolve_rollback_failed import failed_rollback
from tests.unit.test_state_machine import state

VIEWER, OPERATOR, ADMIN = "v" * 20, "o" * 20, "a" * 20


def test_resolve_needs_an_operator_and_force_needs_an_admin(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, _, router, _, _ = world
    readable = {"router": True}

    def router_for(plan, values):  # noqa: ANN001, ANN202 - the factory's own signature
        if not readable["router"]:
            raise RouterError("HAProxy refused 'get weight api/canary': No such backend.")
        return router

    monkeypatch.setattr(api_app, "router_factory", lambda settings: router_for)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'state.db'}",  # the world's store
        haproxy_socket=str(tmp_path / "absent.sock"),
        api_tokens=f"vic:viewer:{VIEWER},olga:operator:{OPERATOR},ada:admin:{ADMIN}",
    )
    client = TestClient(create_app(settings, enqueue_rollback=lambda rollout_id: None))

    def post(rollout_id: str, token: str, **body: object):  # noqa: ANN202
        return client.post(
            f"/api/v1/rollouts/{rollout_id}/resolve",
            json={"reason": "canary drained by hand", **body},
            headers={"Authorization": f"Bearer {token}"},
        )

    first = failed_rollback(runtime, router)
    assert post(first, VIEWER).status_code == 403
    forbidden = post(first, OPERATOR, force=True)
    assert forbidden.status_code == 403 and "force: " in forbidden.json()["detail"]
    refused = post(first, OPERATOR)  # the canary still has 10 %
    assert refused.status_code == 409 and not refused.json()["accepted"]
    assert "the router gives 10% to the canary slot canary" in refused.json()["message"]
    missing_reason = client.post(
        f"/api/v1/rollouts/{first}/resolve",
        json={},
        headers={"Authorization": f"Bearer {OPERATOR}"},
    )
    assert missing_reason.status_code == 422
    assert state(runtime, first)[0].state == "rollback_failed"

    router.weight = 0  # fixed by hand
    resolved = post(first, OPERATOR)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["accepted"] and resolved.json()["rollout_id"] == first
    rollout, events = state(runtime, first)
    assert rollout.state == "rolled_back" and events[-1].actor == "olga"
    assert post(first, OPERATOR).status_code == 409  # ended: nothing to resolve

    second = failed_rollback(runtime, router)  # the service could start again
    readable["router"] = False
    refused = post(second, OPERATOR)
    assert refused.status_code == 409 and "No such backend" in refused.json()["message"]
    forced = post(second, ADMIN, force=True)
    assert forced.status_code == 200, forced.text
    rollout, events = state(runtime, second)
    assert rollout.state == "aborted" and events[-1].actor == "ada"
    assert events[-1].data["forced"] and not events[-1].data["traffic_confirmed"]
    assert (
        client.post(
            "/api/v1/rollouts/r-nope/resolve",
            json={"reason": "x"},
            headers={"Authorization": f"Bearer {OPERATOR}"},
        ).status_code
        == 404
    )
