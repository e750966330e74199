"""Which queries one Prometheus query may answer for every rollout, and the shared answers.

The rewrite is checked with the real PromQL parser; the provider behind the shared
answers is a counter of calls (the real-Prometheus equivalence is an integration test).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from config import PLANS_DIR
from controller.analysis.batching import BatchedQuery, SharedAnswer, SharedAnswers, batch_form
from controller.metrics.prometheus import MetricsError, Sample, Series
from controller.plan_loader import load_plan

VALUES = {
    "service": "checkout",
    "canary_version": "1.1.0",
    "stable_version": "1.0.0",
    "environment": "production",
    "window": "1m",
}


def test_every_query_of_the_demo_plan_is_batched() -> None:
    plan = load_plan(PLANS_DIR / "demo.yaml")
    for criterion in plan.stop_criteria:
        for role, template in criterion.queries().items():
            assert batch_form(template, VALUES) is not None, (criterion.name, role)


def test_the_rollout_matchers_are_lifted_and_the_aggregation_grouped_by_them() -> None:
    template = (
        'sum(increase(http_requests_total{service="{{ service }}", version="{{ canary_version }}",'
        ' code=~"5.."}[{{ window }}]))'
    )
    batched = batch_form(template, VALUES)
    assert batched == BatchedQuery(
        'sum by (service, version) (increase(http_requests_total{service!="", version!="",'
        ' code=~"5.."}[1m]))',
        (("service", "checkout"), ("version", "1.1.0")),
    )
    assert batched.picks({"service": "checkout", "version": "1.1.0"})
    assert not batched.picks({"service": "checkout", "version": "1.0.0"})
    assert not batched.picks({"service": "checkout"})


def test_existing_grouping_is_kept() -> None:
    template = 'histogram_quantile(0.99, sum by (le) (rate(d_bucket{service="{{ service }}"}[5m])))'
    batched = batch_form(template, VALUES)
    assert batched is not None
    assert batched.query == (
        'histogram_quantile(0.99, sum by (le, service) (rate(d_bucket{service!=""}[5m])))'
    )


def test_a_label_matched_against_two_variables_stays_per_rollout() -> None:
    """Canary over stable in one query: ``version`` differs between the two sides, so
    only ``service`` may be lifted, and both sides are grouped by it."""
    template = (
        'sum(rate(x{service="{{ service }}", version="{{ canary_version }}"}[1m]))'
        ' / sum(rate(x{service="{{ service }}", version="{{ stable_version }}"}[1m]))'
    )
    batched = batch_form(template, VALUES)
    assert batched is not None
    assert batched.labels == (("service", "checkout"),)
    assert 'version="1.1.0"' in batched.query and 'version="1.0.0"' in batched.query
    assert batched.query.count("sum by (service) (") == 2


@pytest.mark.parametrize(
    "template",
    [
        # absent() answers for the rollout only when the selector names it.
        'absent(up{service="{{ service }}"})',
        # without: the rollout's labels could be grouped away.
        'sum without (pod) (up{service="{{ service }}"})',
        # a selector that does not name the rollout would mix every rollout's series in.
        'sum(a{service="{{ service }}"}) / sum(b)',
        # on()/group_left move labels.
        'sum(a{service="{{ service }}"}) / on(service) group_left sum(b{service="{{ service }}"})',
        # the variable is not an equality matcher.
        'sum(up{service=~"{{ service }}.*"})',
        'sum(up{job="api-{{ service }}"})',
        # label functions and count_values.
        'label_replace(up{service="{{ service }}"}, "x", "$1", "job", "(.*)")',
        'count_values("v", up{service="{{ service }}"})',
        # the grouping written after the aggregation is not rewritten.
        'sum(rate(d_bucket{service="{{ service }}"}[1m])) by (le)',
        # a string that only looks like an aggregation inside a matcher value.
        'sum(up{service="{{ service }}", path="/sum(1)"})',
        # subqueries and @ are left alone.
        'max_over_time(sum(up{service="{{ service }}"})[5m:1m])',
        'sum(up{service="{{ service }}"} @ 100)',
        # no variable at all: nothing to share by.
        "sum(up)",
    ],
)
def test_queries_whose_meaning_would_change_are_not_batched(template: str) -> None:
    assert batch_form(template, VALUES) is None


@pytest.mark.parametrize("value", ['a"b', "a\\b", ""])
def test_values_promql_would_read_differently_are_not_lifted(value: str) -> None:
    assert batch_form('sum(up{service="{{ service }}"})', {**VALUES, "service": value}) is None


class CountingProvider:
    """Answers every instant query with one sample per service; counts the calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, datetime | None]] = []
        self.fail = fail
        self.delay = 0.0

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        self.calls.append((query, at))
        time.sleep(self.delay)
        if self.fail:
            raise MetricsError(query, "down")
        return [Sample({"service": name}, float(i)) for i, name in enumerate(("a", "b", "c"))]

    def range(self, query: str, start: datetime, end: datetime, step: float) -> list[Series]:
        self.calls.append((query, end))
        return [Series({"service": "b"}, [(start.timestamp(), 1.0), (end.timestamp(), 2.0)])]


QUERY = BatchedQuery('sum by (service) (up{service!=""})', (("service", "b"),))
OTHER = BatchedQuery('sum by (service) (up{service!=""})', (("service", "c"),))
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
TEN_S = timedelta(seconds=10)


def test_rollouts_in_one_slot_share_one_request() -> None:
    provider = CountingProvider()
    shared = SharedAnswers(provider)
    mine, at = shared.instant(QUERY, T0 + timedelta(seconds=1), TEN_S)
    theirs, at_too = shared.instant(OTHER, T0 + timedelta(seconds=4.9), TEN_S)
    assert [s.value for s in mine] == [1.0] and [s.value for s in theirs] == [2.0]
    assert at == at_too == T0  # evaluated at the slot's start
    assert provider.calls == [(QUERY.query, T0)] and shared.asked == 1
    shared.instant(QUERY, T0 + timedelta(seconds=5), TEN_S)  # the next slot asks again
    assert len(provider.calls) == 2


def test_the_slot_is_at_most_half_the_plan_interval() -> None:
    """A rollout checked every second never reads the answer of its previous check."""
    provider = CountingProvider()
    shared = SharedAnswers(provider, max_slot=timedelta(seconds=5))
    assert shared.slot_for(timedelta(seconds=1)) == timedelta(seconds=0.5)
    assert shared.slot_for(timedelta(minutes=1)) == timedelta(seconds=5)
    for second in range(4):
        shared.instant(QUERY, T0 + timedelta(seconds=second), timedelta(seconds=1))
    assert len(provider.calls) == 4


def test_failures_are_not_shared_and_the_next_asker_tries_again() -> None:
    provider = CountingProvider(fail=True)
    shared = SharedAnswers(provider)
    for _ in range(2):
        with pytest.raises(MetricsError):
            shared.instant(QUERY, T0, TEN_S)
    assert len(provider.calls) == 2


def test_concurrent_askers_wait_for_one_request() -> None:
    provider = CountingProvider()
    provider.delay = 0.2
    shared = SharedAnswers(provider)
    answers: list[list[Sample]] = []
    threads = [
        threading.Thread(target=lambda: answers.append(shared.instant(QUERY, T0, TEN_S)[0]))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 8 and len(provider.calls) == 1


def test_range_answers_are_shared_and_picked_by_label() -> None:
    provider = CountingProvider()
    shared = SharedAnswers(provider)
    window = timedelta(minutes=1)
    mine, at = shared.range(QUERY, T0 + timedelta(seconds=2), window, 10.0, TEN_S)
    theirs, _ = shared.range(OTHER, T0 + timedelta(seconds=3), window, 10.0, TEN_S)
    assert at == T0 and len(mine) == 1 and theirs == []
    assert provider.calls == [(QUERY.query, T0)]


def test_a_pick_from_an_indexed_answer_is_what_filtering_every_series_gives() -> None:
    """Each rollout's pick is a lookup in an index built once per answer; it must pick
    exactly the series a scan with ``BatchedQuery.picks`` picks, missing labels too."""
    samples = [
        Sample({"service": "a", "track": "canary"}, 1.0),
        Sample({"service": "a", "track": "stable"}, 2.0),
        Sample({"service": "a"}, 3.0),  # no track: never a track's series
        Sample({"service": "b", "track": "canary"}, 4.0),
        Sample({"service": "a", "track": "canary", "code": "500"}, 5.0),
    ]
    answer = SharedAnswer(T0, samples, [])
    queries = [
        BatchedQuery("q", (("service", "a"), ("track", "canary"))),
        BatchedQuery("q", (("service", "a"),)),
        BatchedQuery("q", (("service", "c"), ("track", "canary"))),
        BatchedQuery("q", (("track", "stable"),)),
    ]
    for query in queries:
        assert answer.picked_samples(query) == [s for s in samples if query.picks(s.labels)]
    assert [s.value for s in answer.picked_samples(queries[0])] == [1.0, 5.0]


def test_old_answers_are_forgotten() -> None:
    shared = SharedAnswers(CountingProvider())
    for minute in range(30):
        shared.instant(QUERY, T0 + timedelta(minutes=minute), TEN_S)
    assert len(shared._answers) == 1


@pytest.mark.parametrize(
    "template",
    [
        # one side keeps the rollout's label, the other aggregates it away: alone
        # they match nothing, batched they would match.
        'sum(rate(errs{service="{{ service }}"}[5m])) / svc_rps{service="{{ service }}"}',
        'sum by (service) (rate(e{service="{{ service }}"}[5m]))'
        ' / sum(rate(e{service="{{ service }}"}[5m]))',
        'sum(rate(a{service="{{ service }}"}[5m])) and b{service="{{ service }}"}',
    ],
)
def test_binary_operations_whose_sides_differ_in_the_lifted_labels_are_not_batched(
    template: str,
) -> None:
    assert batch_form(template, VALUES) is None


def test_a_variable_name_with_underscores_terminates_and_stays_per_rollout() -> None:
    values = {**VALUES, "env_": "x"}
    batched = batch_form('sum(up{service="{{ service }}", job="api-{{ env_ }}"})', values)
    assert batched is not None and batched.labels == (("service", "checkout"),)
    assert 'job="api-x"' in batched.query


def test_the_metric_name_is_never_lifted() -> None:
    batched = batch_form(
        'sum(rate({__name__="{{ metric }}", service="{{ service }}"}[5m]))',
        {**VALUES, "metric": "m"},
    )
    assert batched is not None and '__name__="m"' in batched.query


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        SharedAnswers(CountingProvider()).instant(QUERY, datetime(2026, 1, 1), TEN_S)


def test_a_failure_reaches_the_waiting_askers_and_is_not_kept() -> None:
    provider = CountingProvider(fail=True)
    provider.delay = 0.2
    shared = SharedAnswers(provider)
    errors: list[Exception] = []

    def ask() -> None:
        try:
            shared.instant(QUERY, T0, TEN_S)
        except MetricsError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4 and len(provider.calls) == 1
    assert not shared._in_flight and not shared._answers


def test_a_template_is_worked_out_once_for_every_rollout_each_keeping_its_labels() -> None:
    """Parsing and comparing both queries is the costly part of a form: a fleet of
    rollouts of one template costs one of them, and each still picks its own series."""
    from controller.analysis import batching

    template = (
        'sum(rate(http_requests_total{service="{{ service }}", version="{{ canary_version }}",'
        ' code=~"5.."}[{{ window }}]))'
    )
    first = batch_form(template, VALUES)
    assert first is not None
    before = batching._batch_form.cache_info().misses
    for index in range(200):
        values = {**VALUES, "service": f"svc-{index}", "canary_version": f"2.{index}.0"}
        batched = batch_form(template, values)
        assert batched is not None and batched.query == first.query
        assert batched.labels == (("service", f"svc-{index}"), ("version", f"2.{index}.0"))
    assert batching._batch_form.cache_info().misses == before
