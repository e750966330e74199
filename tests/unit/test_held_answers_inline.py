"""A check whose shared answers this process holds already judges them on its own
thread; only what must wait (a query not held yet, a query asked per rollout) goes
to the check's query threads. The verdicts are the same either way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.analysis import runner
from controller.analysis.batching import SharedAnswers
from controller.analysis.runner import measure_all
from controller.analysis.verdict import Verdict
from controller.metrics.prometheus import Sample
from controller.plan import RatioThreshold

NOW = datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC)
INTERVAL = timedelta(seconds=10)


def auth_failures(name: str, errors: str) -> RatioThreshold:
    return RatioThreshold.model_validate(
        {
            "name": name,
            "judge": "ratio_threshold",
            "errors": errors,
            "total": 'sum(increase(auth_total{service="{{ service }}"}[{{ window }}]))',
            "max_ratio": 0.02,
            "min_requests": 10,
        }
    )


BATCHED = auth_failures(
    "auth", 'sum(increase(auth_total{service="{{ service }}", result="fail"}[{{ window }}]))'
)
# A label matched against a variable that is not a plain label value: asked per rollout.
PER_ROLLOUT = auth_failures(
    "auth_regex", 'sum(increase(auth_total{service=~"{{ service }}|x", result="fail"}[1m]))'
)


class Fleet:
    """A fake Prometheus: a batched query answers every service's series; a per
    rollout query answers one series."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        self.asked.append(query)
        failing = 'result="fail"' in query
        if "by (service)" in query:
            return [
                Sample({"service": s}, 1.0 if failing else 1000.0) for s in ("api", "web", "db")
            ]
        return [Sample({}, 1.0 if failing else 1000.0)]

    def range(self, query, start, end, step_seconds):  # noqa: ANN001
        raise AssertionError("no range queries here")


@pytest.fixture
def handed_to_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    handed: list[str] = []
    real = runner.in_background

    def counting(work, criterion, *args):  # noqa: ANN001
        handed.append(criterion.name)
        return real(work, criterion, *args)

    monkeypatch.setattr(runner, "in_background", counting)
    return handed


def check(service: str, provider: Fleet, shared: SharedAnswers) -> list:
    return measure_all(
        [BATCHED, PER_ROLLOUT],
        provider,
        {"service": service},
        timedelta(minutes=1),
        NOW,
        shared=shared,
        interval=INTERVAL,
    )


def test_held_answers_are_judged_inline_and_the_rest_on_threads(
    handed_to_threads: list[str],
) -> None:
    provider = Fleet()
    shared = SharedAnswers(provider)
    first = check("api", provider, shared)
    assert handed_to_threads == ["auth", "auth_regex"]  # nothing held yet: both wait

    handed_to_threads.clear()
    second = check("web", provider, shared)
    assert handed_to_threads == ["auth_regex"]  # asked per rollout: still on a thread
    for measured in (first, second):
        assert [m.criterion for m in measured] == ["auth", "auth_regex"]
        assert [m.verdict for m in measured] == [Verdict.PASS, Verdict.PASS]
    assert second[0].batched_at is not None and second[0].inputs == first[0].inputs
    assert sum("by (service)" in q for q in provider.asked) == 2  # each batched query once


def test_without_shared_answers_every_criterion_waits_on_a_thread(
    handed_to_threads: list[str],
) -> None:
    provider = Fleet()
    measured = measure_all(
        [BATCHED, PER_ROLLOUT], provider, {"service": "api"}, timedelta(minutes=1), NOW
    )
    assert handed_to_threads == ["auth", "auth_regex"]
    assert [m.verdict for m in measured] == [Verdict.PASS, Verdict.PASS]
