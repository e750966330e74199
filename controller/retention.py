"""How long the event log keeps every measurement of a finished rollout.

A rollout measured every 10 s for an hour writes thousands of measurement events;
once it is finished they are history nobody replays check by check. ``prune``
replaces them, for rollouts finished before a cutoff, with one ``measurements_pruned``
event per rollout that keeps their counts by criterion and verdict and the time span.
Every other event (weights, decisions, approvals, the runbook, drifts) is the audit
trail and stays. The measurement totals behind ``/metrics`` are counters and are
left as they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.store import repository
from controller.store.models import FINAL_STATES, Event, Rollout

ACTOR = "retention"


@dataclass(frozen=True)
class Pruned:
    rollouts: int
    events: int

    def sentence(self, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        return (
            f"{verb} {self.events} measurement event(s) of {self.rollouts} finished "
            "rollout(s), each summarised in one measurements_pruned event"
        )


def prune_measurements(
    session: Session, older_than: timedelta, now: datetime, dry_run: bool = False
) -> Pruned:
    """Summarise and remove the measurement events of rollouts finished more than
    ``older_than`` before ``now``; one transaction per rollout."""
    cutoff = now - older_than
    rollout_ids = session.scalars(
        select(Rollout.id).where(
            Rollout.state.in_([str(s) for s in FINAL_STATES]), Rollout.finished_at < cutoff
        )
    ).all()
    rollouts = events = 0
    for rollout_id in rollout_ids:
        measured = repository.events_for(session, rollout_id, ["measurement"])
        if not measured:
            continue
        rollouts, events = rollouts + 1, events + len(measured)
        if dry_run:
            continue
        counts = Counter(
            f"{e.data.get('criterion', '')}={e.data.get('verdict', '')}" for e in measured
        )
        repository.append_event(
            session,
            rollout_id,
            "measurements_pruned",
            actor=ACTOR,
            at=now,
            message=f"{len(measured)} measurements from {measured[0].at:%Y-%m-%d %H:%M} to "
            f"{measured[-1].at:%Y-%m-%d %H:%M} summarised (event retention)",
            data={
                "count": len(measured),
                "first_at": measured[0].at.isoformat(),
                "last_at": measured[-1].at.isoformat(),
                "by_criterion_and_verdict": dict(sorted(counts.items())),
            },
        )
        session.execute(
            delete(Event).where(Event.id.in_([e.id for e in measured])),
            execution_options={"synchronize_session": False},
        )
        session.commit()
    return Pruned(rollouts, events)
