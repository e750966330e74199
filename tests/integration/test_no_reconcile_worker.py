"""A deployment with no worker on the reconcile queue says so (issue 28, case 12).

Workers for the rollouts and rollback queues and beat run, as in a layout from
before reconcile had a queue of its own; nothing consumes the reconcile queue, so
no rollout ever moves past what its start handed out. ``canary start`` (on the
database and through the API), ``canary status`` (both ways) and the API's views
say that no reconcile has run and what to check; ``/metrics`` shows the age of the
last run (+Inf before any). A reconcile worker started later is seen at once, and
one that stopped long ago is named with the time it last ran.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from controller.lab.stack import RolloutLab
from controller.runtime import utcnow
from controller.store import repository
from controller.store.db import session_factory
from controller.store.models import Heartbeat
from tests.conftest import postgres_schema
from tests.integration.rollout_helpers import STABLE, deploy, finished, start_lab, wait_for
from tests.integration.test_cli import canary

pytestmark = pytest.mark.integration

OPERATOR = secrets.token_hex(16)
ADVICE = "is a worker consuming the reconcile queue?"


@pytest.fixture(scope="module")
def unreconciled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RolloutLab, str]]:
    """The lab with workers on every queue the old layout had, beat and the API, and
    no worker on the reconcile queue."""
    with postgres_schema() as url:
        lab = start_lab(
            tmp_path_factory.mktemp("no-reconcile"),
            url,
            extra_env={"CANARY_API_TOKENS": f"olga:operator:{OPERATOR}"},
        )
        try:
            lab.start_worker("rollouts", "rollouts", concurrency=1)
            lab.start_worker("rollback", "rollback", concurrency=1)
            lab.start_beat()
            yield lab, lab.start_api()
        finally:
            lab.stop()


def eventually(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``check()`` once it is truthy; fails after ``timeout`` s saying what it waited for."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
    return value


def reconcile_age(api: str) -> float:
    """``canary_reconcile_last_run_age_seconds`` from the API's /metrics."""
    text = httpx.get(f"{api}/metrics", timeout=10).text
    [line] = [x for x in text.splitlines() if x.startswith("canary_reconcile_last_run_age_seconds")]
    return float(line.split()[-1])


def stable_for_start(lab: RolloutLab) -> list[str]:
    """``--stable`` for the service's first rollout; after that the store knows it."""
    with session_factory(lab.database_url)() as session:
        known = repository.stable_release(session, lab.settings.service)
    return [] if known else ["--stable", STABLE]


def test_start_status_and_metrics_say_that_no_reconcile_runs(
    unreconciled: tuple[RolloutLab, str],
) -> None:
    lab, api = unreconciled
    assert math.isinf(reconcile_age(api))  # nothing has ever run reconcile

    # On the database: the start says so at once, and status keeps saying so.
    variables = [f"--var={name}={value}" for name, value in lab.plan_variables().items()]
    started = canary(
        "start",
        "demo",
        "--service",
        lab.settings.service,
        "--version",
        deploy(lab),
        *stable_for_start(lab),
        *variables,
        env=lab.env(),
    )
    assert started.returncode == 0, started.stderr
    first = started.stdout.strip()
    assert f"warning: {first} pending" in started.stderr
    assert f"no reconcile has ever run; {ADVICE}" in started.stderr
    shown = canary("status", first, env=lab.env())
    assert shown.returncode == 0, shown.stderr
    assert "warning: pending" in shown.stdout and ADVICE in shown.stdout
    detail = json.loads(canary("status", first, "--json", env=lab.env()).stdout)
    assert detail["state"] == "pending"
    assert detail["stalled"].endswith(f"no reconcile has ever run; {ADVICE}")
    # A rollback is handed to its own queue directly, reconcile or not.
    assert canary("abort", first, "--reason", "no reconcile", env=lab.env()).returncode == 0
    assert wait_for(lab, first, finished).state == "aborted"

    # Through the API: the start's answer says so, and so does status through it.
    answer = httpx.post(
        f"{api}/api/v1/rollouts",
        headers={"Authorization": f"Bearer {OPERATOR}"},
        json={
            "plan": "demo",
            "service": lab.settings.service,
            "version": deploy(lab),
            "stable": STABLE if stable_for_start(lab) else None,
            "variables": lab.plan_variables(),
        },
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    second = answer.json()["id"]
    assert answer.json()["stalled"].endswith(f"no reconcile has ever run; {ADVICE}")
    as_olga = {**lab.env(), "CANARY_API_URL": api, "CANARY_TOKEN": OPERATOR}

    def said_through_the_api() -> str | None:
        # The start's own advance may have run (the rollouts worker takes it): the
        # rollout is then due again at its next check, which nothing hands out.
        shown = canary("status", second, env=as_olga)
        return shown.stdout if "no reconcile has ever run" in shown.stdout else None

    assert ADVICE in eventually(said_through_the_api, "status through the API to say so")

    # A reconcile worker: seen at once, and the rollout stops saying so.
    lab.start_worker("reconcile", "reconcile", concurrency=1)
    assert eventually(lambda: reconcile_age(api) < 30, "a recent reconcile on /metrics")

    def detail_through_the_api() -> dict[str, Any]:
        return json.loads(canary("status", second, "--json", env=as_olga).stdout)

    eventually(lambda: detail_through_the_api()["stalled"] is None, "the warning to go")

    # It stops; ten minutes later (its last run moved back that far by hand, rather
    # than waiting) status names when it last ran and /metrics shows the age.
    lab.stop_worker("reconcile")
    ran_at = utcnow() - timedelta(minutes=10)
    with session_factory(lab.database_url)() as session:
        session.execute(update(Heartbeat).values(at=ran_at))
        session.commit()

    def says_since() -> bool:
        stalled = detail_through_the_api()["stalled"] or ""
        # The time of day it last ran (with the date if that was yesterday).
        since = stalled.partition("no reconcile has run since ")[2]
        return f"{ran_at:%H:%M}" in since and since.endswith(ADVICE)

    eventually(says_since, "status to say since when no reconcile has run")
    assert reconcile_age(api) >= 600
