"""How the scale benchmark turns what it sampled into figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.lab.scale import (
    ScaleFigures,
    Window,
    capacity_line,
    check_lags,
    percentile,
    scale_plan,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_each_check_is_measured_from_the_due_time_it_started_after() -> None:
    dues = {"r-1": {s(0), s(10), s(20), s(30)}, "r-2": {s(5), s(15)}}
    checks = {"r-1": [s(0.2), s(10.5), s(21.0)], "r-2": [s(5.0), s(16.0)]}
    assert sorted(check_lags(checks, dues)) == [0.0, 0.2, 0.5, 1.0, 1.0]


def test_a_check_before_any_sampled_due_time_is_not_counted() -> None:
    assert check_lags({"r-1": [s(1)]}, {"r-1": {s(5)}}) == []
    assert check_lags({"r-1": [s(1)]}, {}) == []


def test_percentiles_and_the_printed_line() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(map(float, range(101))), 0.99) == 99.0
    figures = ScaleFigures(100, 6.0, 0.2, 0.9, 0, 1300.0, 1300.0, 2000.5, 7, 12.5)
    assert figures.line() == (
        "scale rollouts=100 checks_per_min=6 lag_p50_s=0.2 lag_p99_s=0.9 noop_advances=0 "
        "prom_queries_per_round=1300 per_rollout_queries_per_round=1300 "
        "worker_rss_mb=2000.5 redis_keys=7 metrics_scrape_ms=12.5"
    )


def test_the_scale_plan_holds_at_the_canary_with_a_ten_second_interval() -> None:
    plan = scale_plan()
    assert plan.analysis.interval == timedelta(seconds=10)
    assert [s.kind for s in plan.steps()][:2] == ["canary", "ramp"]
    assert plan.steps()[0].hold == timedelta(hours=1)
    assert not plan.gates.approvals


def test_capacity_is_worker_cpu_per_check_scaled_to_ten_thousand_rollouts() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    alone = Window({"r1": [at] * 10}, [], 1.0, 130.0, 0.0, worker_cpu_s=2.0)
    batched = Window({"r1": [at] * 20}, [], 2.0, 26.0, 0.0, worker_cpu_s=1.0)
    line = capacity_line(alone, batched)
    # 50 ms a check; 10,000 rollouts every 10 s are 1,000 checks a second: 50 cores.
    assert line == (
        "capacity worker_cpu_ms_per_check=50.0 per_rollout_worker_cpu_ms_per_check=200.0 "
        "simulated_worker_cores_for_10000=50"
    )
