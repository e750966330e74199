"""The check that moves a rollout's traffic measures from the shared answers.

Nothing that check can ask is from after the move: asking its own queries at that
moment reads the same minutes as the slot's shared answer, and costs Prometheus a
query per criterion per rollout (1,000 rollouts taking their canary traffic asked
13,000 at once). The step's later checks still judge only answers evaluated after
the step began. A real SQLite store; Prometheus and the router are fakes.
"""

from __future__ import annotations

from datetime import datetime

from controller.analysis.batching import SharedAnswers
from controller.engine import advance
from controller.metrics.prometheus import Sample
from tests.unit.test_state_machine import (
    Clock,
    FakeRouter,
    make_plan,
    sqlite_runtime,
    start,
    state,
)


class LabelledMetrics:
    """Answers the unit plan's queries: every version's series for a batched query
    (``v!=""``), the rollout's own for its own; counts both kinds."""

    def __init__(self) -> None:
        self.batched = 0
        self.own = 0

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        value = 1.0 if query.startswith("errors") else 1000.0
        if 'v!=""' in query:
            self.batched += 1
            return [Sample({"v": version}, value) for version in ("1.0", "2.0")]
        self.own += 1
        return [Sample({"v": "2.0"}, value)]

    def range(self, query, start, end, step_seconds):  # noqa: ANN001
        raise AssertionError("no range criteria in this plan")


def test_the_check_that_moves_traffic_reads_shared_answers_and_later_ones_newer(
    tmp_path,  # noqa: ANN001
) -> None:
    metrics, router, clock = LabelledMetrics(), FakeRouter(), Clock()
    runtime = sqlite_runtime(
        tmp_path, metrics, router, clock, shared_answers=SharedAnswers(metrics)
    )
    rollout_id = start(runtime, make_plan())

    advance(runtime, rollout_id)  # moves the canary to 10 % and measures
    rollout, events = state(runtime, rollout_id)
    assert router.weight == 10 and rollout.step_started_at == clock.now
    first = [e.data for e in events if e.kind == "measurement"]
    assert first and all("batched" in m for m in first)
    assert (metrics.batched, metrics.own) == (2, 0)  # errors and total, once each

    clock.now = rollout.next_check_at
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    later = [e.data for e in events if e.kind == "measurement"][len(first) :]
    assert later and all("batched" in m for m in later)
    step_began = rollout.step_started_at.replace(tzinfo=None)
    for measurement in later:
        evaluated = datetime.fromisoformat(measurement["batched"]["evaluated_at"])
        assert evaluated.replace(tzinfo=None) > step_began
    assert metrics.own == 0
