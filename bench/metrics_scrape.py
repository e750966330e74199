"""Benchmark: the cost of one ``/metrics`` scrape with a long history in the store.

A PostgreSQL schema of its own is filled with finished rollouts (succeeded, rolled
back by criteria and by alerts) and active ones, each with a standard plan's
length of measurement events, written the way the controller writes them (so the
measurement totals and each rollout's last values are kept as in production). Then
the API's collector is timed, and, in the same process on the same data, the way
``/metrics`` used to be computed (scanning the event log: every measurement event
of every active rollout, a count over all measurement events, one query per
alert-triggered rollback) as the baseline.

    .venv/bin/python bench/metrics_scrape.py [--finished 1000] [--active 100]
        [--checks 60] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Prints ``metrics_scrape finished=… active=… events=… p50_ms=… p95_ms=… baseline_p50_ms=…
baseline_p95_ms=… speedup=…``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from config import PLANS_DIR  # noqa: E402
from controller.lab.postgres import own_schema  # noqa: E402
from controller.plan_loader import load_plan  # noqa: E402
from controller.store import repository  # noqa: E402
from controller.store.db import migrate, session_factory  # noqa: E402
from controller.store.models import ACTIVE_STATES, Event, Rollout  # noqa: E402
from controller.telemetry import ROLLED_BACK_STATES, StoreCollector  # noqa: E402

DEFAULT_URL = os.environ.get(
    "CANARY_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CRITERIA = [c.name for c in load_plan(PLANS_DIR / "standard.yaml").stop_criteria]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fill(sessions: sessionmaker[Session], finished: int, active: int, checks: int) -> int:
    """Rollouts with ``checks`` checks of every criterion each; the events in bulk,
    the totals and the rollouts' last values as the controller keeps them."""
    plan = load_plan(PLANS_DIR / "standard.yaml").model_dump(mode="json")
    events = 0
    for index in range(finished + active):
        rollout_id = f"r-bench{index:06d}"
        is_active = index >= finished
        alerted = not is_active and index % 5 == 0
        state = "running" if is_active else ("rolled_back" if index % 5 in (0, 1) else "succeeded")
        trigger = (
            {"kind": "alert", "at": T0.isoformat(), "stable_after_seconds": 0.4}
            if alerted
            else (
                {"kind": "criterion", "at": T0.isoformat(), "stable_after_seconds": 0.2}
                if state == "rolled_back"
                else None
            )
        )
        last = {c: {"value": 0.001, "limit": 0.02, "verdict": "pass"} for c in CRITERIA}
        rows = [
            {
                "rollout_id": rollout_id,
                "at": T0 + timedelta(minutes=check),
                "kind": "measurement",
                "step_index": 1,
                "actor": "controller",
                "message": f"{criterion}: pass: 0.001 <= 0.02",
                "data": {
                    "criterion": criterion,
                    "judge": "ratio_threshold",
                    "verdict": "pass",
                    "reason": "0.001 <= 0.02",
                    "value": 0.001,
                    "limit": 0.02,
                    "queries": {"errors": "sum(increase(x[5m]))", "total": "sum(increase(y[5m]))"},
                    "inputs": {"errors": 1.0, "total": 1000.0},
                    "details": {},
                },
            }
            for check in range(checks)
            for criterion in CRITERIA
        ]
        with sessions() as session:
            session.add(
                Rollout(
                    id=rollout_id,
                    service=f"svc-{index:06d}",
                    plan_name="standard",
                    plan=plan,
                    canary_version="2.0.0",
                    stable_version="1.0.0",
                    state=state,
                    step_index=1,
                    weight=10 if is_active else 0,
                    created_by="bench",
                    created_at=T0,
                    updated_at=T0,
                    next_check_at=T0,
                    finished_at=None if is_active else T0 + timedelta(hours=2),
                    tripped_criterion=CRITERIA[0]
                    if state == "rolled_back" and not alerted
                    else None,
                    analysis={"last_measured": last, **({"trigger": trigger} if trigger else {})},
                )
            )
            session.flush()
            session.execute(insert(Event), rows)
            for row in rows:  # what append_event does for the totals
                repository.totals.count_measurement(session, row["data"])
            session.commit()
        events += len(rows)
    return events


def legacy_scrape(session: Session) -> None:
    """``/metrics`` as it was computed before the aggregates: the baseline."""
    for rollout in session.scalars(
        select(Rollout).where(Rollout.state.in_([str(s) for s in ACTIVE_STATES]))
    ).all():
        latest = {}
        for event in session.scalars(
            select(Event)
            .where(Event.rollout_id == rollout.id, Event.kind == "measurement")
            .order_by(Event.id)
        ):
            latest[event.data["criterion"]] = event.data
    criterion = Event.data["criterion"].as_string()
    verdict = Event.data["verdict"].as_string()
    session.execute(
        select(criterion, verdict, func.count())
        .where(Event.kind == "measurement")
        .group_by(criterion, verdict)
    ).all()
    for rollout in session.scalars(
        select(Rollout).where(Rollout.state.in_([str(s) for s in ROLLED_BACK_STATES]))
    ).all():
        if ((rollout.analysis or {}).get("trigger") or {}).get("kind") == "alert":
            session.scalars(
                select(Event.at).where(
                    Event.rollout_id == rollout.id,
                    Event.kind == "weight_set",
                    Event.actor == "rollback",
                )
            ).first()


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    run()  # warm: connections, caches
    took = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        took.append((time.perf_counter() - began) * 1000)
    return took


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finished", type=int, default=1000)
    parser.add_argument("--active", type=int, default=100)
    parser.add_argument("--checks", type=int, default=60, help="checks per rollout (x criteria)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    args = parser.parse_args()
    with own_schema(args.database_url, prefix="bench_metrics") as url:
        migrate(url)
        sessions = session_factory(url)
        began = time.monotonic()
        events = fill(sessions, args.finished, args.active, args.checks)
        print(f"filled {events} events in {time.monotonic() - began:.0f}s", file=sys.stderr)
        with sessions() as session:
            session.execute(text("ANALYZE"))
            session.commit()
        registry = CollectorRegistry()
        registry.register(StoreCollector(sessions))
        scrape = timed(lambda: generate_latest(registry), args.repeat)

        def baseline() -> None:
            with sessions() as session:
                legacy_scrape(session)

        legacy = timed(baseline, max(3, args.repeat // 4))
        sessions.kw["bind"].dispose()
    p50, legacy_p50 = statistics.median(scrape), statistics.median(legacy)
    print(
        f"metrics_scrape finished={args.finished} active={args.active} events={events} "
        f"p50_ms={p50:.1f} p95_ms={percentile(scrape, 0.95):.1f} "
        f"baseline_p50_ms={legacy_p50:.1f} baseline_p95_ms={percentile(legacy, 0.95):.1f} "
        f"speedup={legacy_p50 / p50:.0f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
