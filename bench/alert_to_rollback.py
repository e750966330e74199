"""Benchmark: how fast an alert puts traffic back on stable.

(a) webhook -> stable: from the Alertmanager webhook reaching the API to HAProxy
    reading back canary weight 0 (API, the store, Redis, the rollback worker,
    HAProxy's runtime API).
(b) fault -> stable: from injecting 5xx into the canary to HAProxy reading back
    weight 0, through Prometheus (1 s scrape and evaluation), Alertmanager
    (group_wait 0 s), the API and the rollback worker.

A baseline in the same process: setting and reading back the weight directly on
HAProxy's runtime API, the floor any rollback path sits on.

    .venv/bin/python bench/alert_to_rollback.py [--rollbacks 40] [--faults 10] \
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

The store is an SQLite file in the lab's work dir unless ``--database-url`` names
another (its tables are created if missing; rows are left behind).

The last line is ``alert_to_rollback p50_ms=... p95_ms=... p99_ms=... n=...`` for (a).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import PLANS_DIR  # noqa: E402
from controller.lab.stack import LabSettings, RolloutLab  # noqa: E402
from controller.operations import start_rollout  # noqa: E402
from controller.plan import Plan  # noqa: E402
from controller.plan_loader import load_plan  # noqa: E402
from controller.runtime import utcnow  # noqa: E402
from controller.store import repository  # noqa: E402
from controller.store.db import migrate, session_factory  # noqa: E402
from controller.store.models import FINAL_STATES, Rollout  # noqa: E402

SERVICE = "checkout"
STABLE = "1.0.0"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<34} n={len(values):<3} p50={percentile(values, 50):8.1f} ms  "
        f"p95={percentile(values, 95):8.1f} ms  p99={percentile(values, 99):8.1f} ms  "
        f"max={max(values):8.1f} ms  mean={statistics.fmean(values):8.1f} ms"
    )


def bench_plan() -> Plan:
    """The demo plan with the canary left running by the runbook and the metric
    criteria slowed down: only the alert path may roll back here."""
    data = load_plan(PLANS_DIR / "demo.yaml").model_dump(mode="json")
    data["runbook"]["disable_canary"] = None
    for criterion in data["stop_criteria"]:
        criterion["sustained_for"] = "1h"
    return Plan.from_data(data)


def active_canary(lab: RolloutLab, plan: Plan, version: str) -> str:
    """A rollout holding its canary at 10 % (no advance will touch it for an hour)."""
    sessions = session_factory(lab.database_url)
    with sessions() as session:
        rollout = start_rollout(
            session,
            plan,
            service=SERVICE,
            version=version,
            stable=STABLE,
            created_by="bench",
            now=utcnow(),
            router_for=lab.router_for,
            variables=lab.plan_variables(),
        )
        session.execute(
            update(Rollout)
            .where(Rollout.id == rollout.id)
            .values(
                state="running",
                weight=10,
                step_index=1,
                step_started_at=utcnow(),
                next_check_at=utcnow() + timedelta(hours=1),
                version=Rollout.version + 1,
            )
        )
        session.commit()
    lab.router().set_canary_weight(10)
    return rollout.id


def wait_weight_zero(lab: RolloutLab, timeout: float = 30) -> float:
    router = lab.router()
    deadline = time.perf_counter() + timeout
    while router.get_canary_weight() != 0:
        if time.perf_counter() > deadline:
            raise RuntimeError("traffic never went back to stable")
    return time.perf_counter()


def wait_finished(lab: RolloutLab, rollout_id: str, timeout: float = 30) -> None:
    """Let the runbook finish so the next rollback does not queue behind it."""
    sessions = session_factory(lab.database_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            rollout = repository.get_rollout(session, rollout_id)
            steps = [e for e in repository.events_for(session, rollout_id, ["runbook"])]
            if rollout.state in FINAL_STATES and len(steps) >= 5:
                return
        time.sleep(0.05)
    raise RuntimeError(f"rollout {rollout_id} did not finish its runbook")


def webhook_payload(version: str) -> dict:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "canary",
        "groupKey": "{}",
        "alerts": [
            {
                "status": "firing",
                "fingerprint": secrets.token_hex(8),
                "labels": {
                    "alertname": "Bench",
                    "severity": "critical",
                    "service": SERVICE,
                    "version": version,
                },
            }
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollbacks", type=int, default=40, help="webhook runs (a)")
    parser.add_argument("--faults", type=int, default=10, help="fault-injection runs (b)")
    parser.add_argument("--database-url", default=None, help="the store (default: SQLite)")
    args = parser.parse_args()
    token = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="bench-alert-"))
    settings = LabSettings(
        service=SERVICE,
        stable_version=STABLE,
        canary_version="2.0.0",
        database_url=args.database_url,
        extra_env={"CANARY_ALERTMANAGER_TOKEN": token},
    )
    plan = bench_plan()
    print(f"lab in {workdir}", file=sys.stderr)
    with RolloutLab(workdir, settings) as lab:
        migrate(lab.database_url)
        lab.start_worker("rollback", "rollback", concurrency=1)
        lab.start_worker("aftercare", "runbook,notify", concurrency=1)  # runs the runbooks
        api = lab.start_api()
        lab.start_alerting(api, token)
        router = lab.router()

        baseline = []
        for _ in range(max(args.rollbacks, 30)):
            router.set_canary_weight(10)
            started = time.perf_counter()
            router.set_canary_weight(0)
            while router.get_canary_weight() != 0:
                pass
            baseline.append((time.perf_counter() - started) * 1000)

        webhook_ms = []
        with httpx.Client(trust_env=False, timeout=10) as client:
            for _ in range(args.rollbacks):
                rollout_id = active_canary(lab, plan, "2.0.0")
                started = time.perf_counter()
                response = client.post(
                    f"{api}/api/v1/alerts/alertmanager",
                    json=webhook_payload("2.0.0"),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 202 and response.json()["matched"], response.text
                webhook_ms.append((wait_weight_zero(lab) - started) * 1000)
                wait_finished(lab, rollout_id)

        fault_ms = []
        for i in range(args.faults):
            version = f"3.0.{i}"
            lab.deploy_canary(version)
            rollout_id = active_canary(lab, plan, version)
            time.sleep(3)  # the canary's series exist and its rate is healthy
            started = time.perf_counter()
            lab.set_faults("canary", error_rate=0.8)
            fault_ms.append((wait_weight_zero(lab, timeout=60) - started) * 1000)
            wait_finished(lab, rollout_id)
            lab.set_faults("canary")

    print(summary("baseline: HAProxy set+read weight", baseline))
    print(summary("(a) webhook -> traffic on stable", webhook_ms))
    if fault_ms:
        print(summary("(b) fault -> traffic on stable", fault_ms))
    print(
        f"ratio (a)/baseline at p50: {percentile(webhook_ms, 50) / percentile(baseline, 50):.1f}x"
    )
    print(
        f"alert_to_rollback p50_ms={percentile(webhook_ms, 50):.1f} "
        f"p95_ms={percentile(webhook_ms, 95):.1f} p99_ms={percentile(webhook_ms, 99):.1f} "
        f"n={len(webhook_ms)}"
    )


if __name__ == "__main__":
    main()
