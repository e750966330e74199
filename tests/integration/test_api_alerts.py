"""The HTTP API and the Alertmanager webhook on the real stack, with a real
Alertmanager fed by a real Prometheus alerting rule on the canary's 5xx."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from config import PLANS_DIR
from controller.lab.ports import free_port
from controller.lab.stack import RolloutLab
from controller.plan import Plan
from controller.store.models import Event, Rollout
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import (
    PLAN,
    STABLE,
    at_canary,
    begin,
    deploy,
    finished,
    snapshot,
    start_lab,
    versions_served,
    wait_for,
)
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_cli import canary

pytestmark = pytest.mark.integration

OPERATOR, VIEWER, ADMIN, ALERTS = (secrets.token_hex(16) for _ in range(4))


def slow_criteria_plan() -> Plan:
    """The demo plan with its 5xx criterion made slow, so only the alert path can be
    what rolls the canary back within seconds."""
    data = PLAN.model_dump(mode="json")
    for criterion in data["stop_criteria"]:
        if criterion["name"] == "http_5xx_vs_baseline":
            criterion["sustained_for"] = "10m"
    return Plan.from_data(data)


class IncidentReceiver:
    """A real HTTP endpoint standing in for the team's incident tool."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(
                    {"auth": self.headers.get("Authorization"), "body": json.loads(body)}
                )
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/incidents"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


INCIDENT_TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def receiver() -> Iterator[IncidentReceiver]:
    found = IncidentReceiver()
    yield found
    found.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: IncidentReceiver
) -> Iterator[tuple[RolloutLab, str]]:
    with postgres_schema() as url:
        lab = start_lab(
            tmp_path_factory.mktemp("api"),
            url,
            extra_env={
                "CANARY_API_TOKENS": f"olga:operator:{OPERATOR},vic:viewer:{VIEWER},"
                f"ada:admin:{ADMIN}",
                "CANARY_ALERTMANAGER_TOKEN": ALERTS,
                "CANARY_INCIDENT_WEBHOOK_URL": receiver.url,
                "CANARY_INCIDENT_WEBHOOK_TOKEN": INCIDENT_TOKEN,
            },
        )
        try:
            lab.start_controller()
            api = lab.start_api()
            lab.start_alerting(api, ALERTS)
            yield lab, api
        finally:
            lab.stop()


def canary_measured_healthy(_rollout: Rollout, events: list[Event]) -> bool:
    """The canary has taken traffic long enough for its 5xx to be judged (and pass)."""
    return at_canary(_rollout, events) and any(
        e.kind == "measurement"
        and e.step_index == 1
        and e.data["criterion"] == "http_5xx_vs_baseline"
        and e.data["verdict"] == "pass"
        for e in events
    )


def call(
    method: str,
    url: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.request(method, url, headers=headers, timeout=10, trust_env=False, **kwargs)


def webhook(
    api: str, token: str | None, fingerprint: str | None = None, **labels: str
) -> httpx.Response:
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "x",
        "groupKey": "{}",
        "alerts": [
            {
                "status": "firing",
                "fingerprint": fingerprint or secrets.token_hex(4),
                "labels": {"alertname": "Manual", "severity": "critical", **labels},
            }
        ],
    }
    return call("POST", f"{api}/api/v1/alerts/alertmanager", token, json=payload)


def test_alert_from_prometheus_rolls_back_through_alertmanager(stack) -> None:
    lab, api = stack
    version = deploy(lab)
    rollout_id = begin(lab, version, plan=slow_criteria_plan())
    wait_for(lab, rollout_id, canary_measured_healthy)
    faulted = time.monotonic()
    lab.set_faults("canary", error_rate=0.6)
    rollout = wait_for(lab, rollout_id, finished, timeout=60)
    took = time.monotonic() - faulted
    assert rollout.state == "rolled_back", rollout.reason
    assert rollout.analysis["trigger"]["kind"] == "alert"
    assert rollout.analysis["trigger"]["alertname"] == "CanaryHigh5xxRate"
    assert lab.router().get_canary_weight() == 0 and versions_served(lab) == {STABLE}
    assert took < 20, f"fault to rollback took {took:.1f}s"

    _, events = snapshot(lab, rollout_id)
    deadline = time.monotonic() + 90
    while not any(e.kind == "runbook" and e.data["step"] == 5 for e in events):
        assert time.monotonic() < deadline, [e.message for e in events if e.kind == "runbook"]
        time.sleep(0.2)
        _, events = snapshot(lab, rollout_id)
    time.sleep(1)  # a second delivery of the runbook, if any, would show by now
    _, events = snapshot(lab, rollout_id)
    ran = [e.data["step"] for e in events if e.kind == "runbook"]
    assert ran == [1, 2, 3, 4, 5], f"the runbook ran more than once: {ran}"
    steps = {e.data["step"]: e.data for e in events if e.kind == "runbook"}
    assert all(step["ok"] for step in steps.values()), steps
    assert all(step["started_at"] <= step["finished_at"] for step in steps.values())
    assert httpx.get(f"{lab.instance('canary').url}/healthz", trust_env=False).status_code == 503

    incident = call("GET", f"{api}/api/v1/rollouts/{rollout_id}/incident", VIEWER).json()
    assert incident["trigger"]["kind"] == "alert"
    assert incident["started_by"] == "pytest"
    snapshot_by_name = {m["criterion"]: m for m in incident["metrics_snapshot"]}
    assert set(snapshot_by_name) == {c.name for c in PLAN.stop_criteria}
    five_xx = snapshot_by_name["http_5xx_vs_baseline"]
    # The alert was faster than the criterion: the canary is over its limit, which the
    # binomial test may not yet call significant on the requests of the snapshot.
    assert five_xx["verdict"] in ("fail", "inconclusive"), five_xx
    assert five_xx["value"] > five_xx["limit"] and version in five_xx["queries"]["canary_total"]
    assert any(e["kind"] == "rollback_requested" for e in incident["timeline"])
    same = call("GET", f"{api}/api/v1/incidents/{incident['id']}", VIEWER).json()
    assert same["id"] == incident["id"]
    shown = subprocess.run(
        [sys.executable, "-m", "controller", "incident", "show", rollout_id, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **lab.env()},
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == incident["id"]


def test_webhooks_without_valid_credentials_change_nothing(stack) -> None:
    lab, api = stack
    version = deploy(lab)
    rollout_id = begin(lab, version)
    wait_for(lab, rollout_id, at_canary)
    assert webhook(api, None, service="checkout").status_code == 401
    assert webhook(api, "forged-token-0123456789", service="checkout").status_code == 401
    assert webhook(api, OPERATOR, service="checkout").status_code == 401  # not the alert token
    other = webhook(api, ALERTS, service="payments")
    assert other.status_code == 202 and other.json()["matched"] == []
    assert other.json()["ignored"][0]["reason"] == "no active rollout of payments"
    stable_alert = webhook(api, ALERTS, service="checkout", version=STABLE)
    assert stable_alert.json()["matched"] == []
    resolved = call(
        "POST",
        f"{api}/api/v1/alerts/alertmanager",
        ALERTS,
        json={
            "version": "4",
            "status": "resolved",
            "alerts": [
                {"status": "resolved", "labels": {"service": "checkout", "severity": "critical"}}
            ],
        },
    )
    assert resolved.status_code == 202 and resolved.json()["matched"] == []
    bad = call("POST", f"{api}/api/v1/alerts/alertmanager", ALERTS, json={"version": "4"})
    assert bad.status_code == 422 and "alerts" in str(bad.json()["detail"])
    garbage = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    url = f"{api}/api/v1/alerts/alertmanager"
    assert call("POST", url, None, **garbage).status_code == 401  # the token comes first
    assert call("POST", url, ALERTS, **garbage).status_code == 422
    naive = call(
        "POST",
        url,
        ALERTS,
        json={
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"service": "checkout", "severity": "critical"},
                    "startsAt": "2030-01-01T00:00:00",
                }
            ],
        },
    )
    assert naive.status_code == 422
    assert naive.json()["detail"][0]["loc"] == ["body", "alerts", 0, "startsAt"]
    huge = call(
        "POST",
        f"{api}/api/v1/alerts/alertmanager",
        ALERTS,
        content=b"{" + b" " * 2_000_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    rollout, _ = snapshot(lab, rollout_id)
    assert rollout.state == "running" and lab.router().get_canary_weight() > 0

    hit_fingerprint = secrets.token_hex(4)
    hit = webhook(api, ALERTS, service="checkout", fingerprint=hit_fingerprint)
    assert hit.status_code == 202 and hit.json()["matched"][0]["rollout_id"] == rollout_id
    again = webhook(api, ALERTS, service="checkout", fingerprint=hit_fingerprint)
    assert again.json()["matched"] == []
    assert again.json()["ignored"][0]["reason"].startswith("already")
    assert wait_for(lab, rollout_id, finished).state == "rolled_back"


def test_api_roles(stack) -> None:
    lab, api = stack
    rollouts = f"{api}/api/v1/rollouts"
    assert call("GET", rollouts).status_code == 401
    assert call("GET", rollouts, "not-a-token").status_code == 401
    assert call("GET", rollouts, VIEWER).status_code == 200
    body = {
        "plan": "demo",
        "service": "checkout",
        "version": "9.9.9",
        "stable": STABLE,
        "variables": lab.plan_variables(),
    }
    refused = call("POST", rollouts, VIEWER, json=body)
    assert refused.status_code == 403 and "needs operator" in refused.json()["detail"]
    deploy(lab)
    created = call("POST", rollouts, OPERATOR, json=body)
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    assert call("GET", f"{rollouts}/{rollout_id}", VIEWER).json()["created_by"] == "olga"
    assert call("POST", f"{rollouts}/{rollout_id}/pause", VIEWER, json={}).status_code == 403
    paused = call("POST", f"{rollouts}/{rollout_id}/pause", OPERATOR, json={"reason": "look"})
    assert paused.status_code == 200 and paused.json()["accepted"]
    assert call("POST", f"{rollouts}/{rollout_id}/resume", ADMIN).status_code == 200
    rolled = call(
        "POST", f"{rollouts}/{rollout_id}/rollback", OPERATOR, json={"reason": "manual test"}
    )
    assert rolled.status_code == 202
    assert wait_for(lab, rollout_id, finished).state == "rolled_back"
    events = call("GET", f"{rollouts}/{rollout_id}/events", VIEWER).json()
    assert [e["kind"] for e in events if e["kind"] in ("paused", "resumed")] == [
        "paused",
        "resumed",
    ]


def test_operators_start_from_plans_an_admin_registered(stack) -> None:
    lab, api = stack
    plans = f"{api}/api/v1/plans"
    text = (PLANS_DIR / "demo.yaml").read_text()
    body = {"name": "checkout-release", "plan_yaml": text, "note": "first review"}
    refused = call("POST", plans, OPERATOR, json=body)
    assert refused.status_code == 403 and "needs admin" in refused.text
    assert call("GET", plans, VIEWER).json() == []  # nothing half-registered
    first = call("POST", plans, ADMIN, json=body)
    assert first.status_code == 201, first.text
    assert (first.json()["version"], first.json()["registered_by"]) == (1, "ada")
    again = call("POST", plans, ADMIN, json=body)  # the same text is not a new version
    assert again.status_code == 200 and again.json()["version"] == 1
    bad = call(
        "POST",
        plans,
        ADMIN,
        json={**body, "plan_yaml": text.replace("weight: 10", "weight: true", 1)},
    )
    assert bad.status_code == 422 and "stages" in bad.text
    assert [p["version"] for p in call("GET", plans, VIEWER).json()] == [1]
    shown = call("GET", f"{plans}/checkout-release", VIEWER).json()
    assert shown["plan_yaml"] == text
    assert call("GET", f"{plans}/checkout-release?version=7", VIEWER).status_code == 404
    deploy(lab)
    started = call(
        "POST",
        f"{api}/api/v1/rollouts",
        OPERATOR,
        json={
            "plan": "checkout-release",
            "service": "checkout",
            "version": "9.9.8",
            "stable": STABLE,
            "variables": lab.plan_variables(),
        },
    )
    assert started.status_code == 201, started.text
    rollout_id = started.json()["id"]
    created = call("GET", f"{api}/api/v1/rollouts/{rollout_id}/events", VIEWER).json()[0]
    assert created["data"]["plan_origin"] == "registered plan checkout-release v1"
    # The CLI through the API acts as the token's identity, with the token's role.
    as_olga = {"CANARY_API_URL": api, "CANARY_TOKEN": OPERATOR}
    inline = canary(
        "start", str(PLANS_DIR / "demo.yaml"), "--service", "x", "--version", "2", env=as_olga
    )
    assert inline.returncode == 5 and "an inline plan needs admin" in inline.stderr  # not allowed
    paused = canary("pause", rollout_id, "--reason", "look", env=as_olga)
    assert paused.returncode == 0, paused.stderr
    events = call("GET", f"{api}/api/v1/rollouts/{rollout_id}/events", VIEWER).json()
    assert [e["actor"] for e in events if e["kind"] == "paused"] == ["olga"]
    aborted = canary("abort", rollout_id, env={"CANARY_API_URL": api, "CANARY_TOKEN": VIEWER})
    assert (
        aborted.returncode == 5 and "(403)" in aborted.stderr and "needs operator" in aborted.stderr
    )
    aborted = canary("abort", rollout_id, "--reason", "done", env=as_olga)
    assert aborted.returncode == 0, aborted.stderr
    assert wait_for(lab, rollout_id, finished).state in ("aborted", "rolled_back")


def test_api_refuses_bad_input_with_the_field(stack) -> None:
    _, api = stack
    rollouts = f"{api}/api/v1/rollouts"
    named = {"plan": "demo", "service": "s", "version": "2", "stable": "1"}
    cases = [
        ({**named, "plan": "nope"}, OPERATOR, 422, "plan"),
        ({**named, "service": "check out"}, OPERATOR, 422, "service"),
        ({**named, "plan_yaml": "x"}, OPERATOR, 422, "exactly one"),
        (
            {"plan_yaml": "name: x\nstages: []\n", "service": "s", "version": "2"},
            OPERATOR,
            403,
            "an inline plan needs admin",
        ),
        (
            {"plan_yaml": "name: x\nstages: []\n", "service": "s", "version": "2"},
            ADMIN,
            422,
            "stages",
        ),
        ({**named, "extra": 1}, OPERATOR, 422, "extra"),
        ({**named, "variables": {"nope": "x"}}, OPERATOR, 422, "variables.nope"),
        (
            {**named, "variables": {"blue_url": "http://169.254.169.254"}},
            OPERATOR,
            422,
            "does not match the plan's pattern",
        ),
    ]
    for body, token, code, word in cases:
        response = call("POST", rollouts, token, json=body)
        assert response.status_code == code, (body, response.text)
        assert word in response.text
    assert call("GET", f"{rollouts}/r-missing", VIEWER).status_code == 404
    assert call("GET", f"{api}/readyz").json()["checks"] == {
        "database": "ok",
        "redis": "ok",
        "prometheus": "ok",
    }
    assert (
        "/api/v1/alerts/alertmanager" in call("GET", f"{api}/api/v1/openapi.json").json()["paths"]
    )


def test_failed_runbook_steps_are_recorded_and_never_undo_the_shift(
    stack, receiver: IncidentReceiver
) -> None:
    lab, api = stack
    data = PLAN.model_dump(mode="json")
    data["runbook"]["stable_healthchecks"] = [
        {"name": "stable-health", "url": "{{ stable_url }}/no-such-health", "expect_status": 204}
    ]
    version = deploy(lab)
    rollout_id = begin(lab, version, plan=Plan.from_data(data))
    wait_for(lab, rollout_id, at_canary)
    rolled = call(
        "POST",
        f"{api}/api/v1/rollouts/{rollout_id}/rollback",
        OPERATOR,
        json={"reason": "bad smell"},
    )
    assert rolled.status_code == 202
    assert wait_for(lab, rollout_id, finished).state == "rolled_back"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, events = snapshot(lab, rollout_id)
        steps = {e.data["step"]: e.data for e in events if e.kind == "runbook"}
        if 5 in steps:
            break
        time.sleep(0.2)
    assert steps[1]["ok"] and not steps[2]["ok"] and "expected 204" in steps[2]["detail"]
    assert steps[3]["ok"] and steps[4]["ok"] and steps[5]["ok"]
    assert lab.router().get_canary_weight() == 0 and versions_served(lab) == {STABLE}

    posted = [r for r in receiver.received if r["body"]["rollout_id"] == rollout_id]
    assert posted and posted[-1]["auth"] == f"Bearer {INCIDENT_TOKEN}"
    document = posted[-1]["body"]
    assert document["trigger"]["kind"] == "manual" and document["trigger"]["reason"] == "bad smell"
    assert document["started_by"] == "pytest"
    assert {m["criterion"] for m in document["metrics_snapshot"]} == {
        c.name for c in PLAN.stop_criteria
    }
    incident = call("GET", f"{api}/api/v1/rollouts/{rollout_id}/incident", VIEWER).json()
    assert incident["webhook_status"] == "posted: HTTP 201"


def test_with_the_broker_down_the_api_shifts_traffic_itself(stack) -> None:
    """Redis unreachable from the API: the webhook still answers 202 only once the
    rollback is recorded, and traffic is on stable when it answers; the runbook the
    rollback promised is left in the outbox and run by the workers."""
    lab, _ = stack
    dead_port = free_port()
    api = lab.start_api("api-no-broker", {"CANARY_BROKER_URL": f"redis://127.0.0.1:{dead_port}/0"})
    version = deploy(lab)
    rollout_id = begin(lab, version, plan=slow_criteria_plan())
    wait_for(lab, rollout_id, at_canary)
    response = webhook(api, ALERTS, service="checkout")
    assert response.status_code == 202, response.text
    [matched] = response.json()["matched"]
    assert matched["rollout_id"] == rollout_id
    assert matched["handed_to"].startswith("the API itself (broker unavailable)")
    assert lab.router().get_canary_weight() == 0  # before the answer, not eventually
    rollout, events = snapshot(lab, rollout_id)
    assert rollout.state == "rolled_back"
    assert any(e.kind == "weight_set" and e.data.get("rollback") for e in events)
    # The runbook went to the outbox; the workers (on the real broker) pick it up
    # within the first-dispatch grace (seconds), well before the 60 s redispatch delay.
    wait_for(
        lab,
        rollout_id,
        lambda _r, ev: any(e.kind == "runbook" and e.data["step"] == 1 for e in ev),
        timeout=40,
    )
    # Its steps then run as on any rollback (the incident's snapshot waits on
    # Prometheus, slow on a busy machine).
    wait_for(
        lab,
        rollout_id,
        lambda _r, ev: any(e.kind == "runbook" and e.data["step"] == 5 for e in ev),
        timeout=90,
    )


def test_with_the_store_down_the_webhook_asks_alertmanager_to_retry(stack) -> None:
    lab, _ = stack
    url = make_url(lab.database_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    api = lab.start_api("api-store-cut", {"CANARY_DATABASE_URL": through_proxy})
    assert webhook(api, ALERTS, service="nothing-rolling-out").status_code == 202
    proxy.cut()  # the database goes away under the running API
    response = webhook(api, ALERTS, service="checkout")
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    assert "nothing was recorded" in response.json()["detail"]
