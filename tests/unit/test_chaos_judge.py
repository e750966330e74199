"""The chaos benchmark's reading of an event log: steps twice or out of order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.lab.chaos import step_violations
from controller.store.models import Event


def _event(kind: str, step: int | None = None, **data: Any) -> Event:
    return Event(
        rollout_id="r-1",
        at=datetime.now(UTC),
        kind=kind,
        step_index=step,
        actor="t",
        message="",
        data=data,
    )


def test_a_clean_rollout_and_a_rolled_back_one_have_no_violations() -> None:
    clean = [
        _event("weight_set", 0, weight=10),
        _event("step_completed", 0),
        _event("weight_set", 1, weight=50),
        _event("weight_set", 1, weight=50, reasserted=True),  # a drift put back
        _event("step_completed", 1),
        _event("weight_set", 2, weight=100),
        _event("step_completed", 2),
    ]
    assert step_violations(clean) == []
    rolled_back = [*clean[:2], _event("weight_set", 1, weight=0, rollback=True)]
    assert step_violations(rolled_back) == []


def test_a_step_done_twice_or_backwards_and_two_rollback_shifts_are_counted() -> None:
    history = [
        _event("weight_set", 0, weight=10),
        _event("step_completed", 0),
        _event("weight_set", 1, weight=50),
        _event("weight_set", 1, weight=50),
        _event("step_completed", 0),
        _event("weight_set", 1, weight=0, rollback=True),
        _event("weight_set", 1, weight=0, rollback=True),
    ]
    assert step_violations(history) == [
        "weight 50 set after 50",
        "2 rollback shifts recorded",
        "step 0 completed after step 0",
    ]
