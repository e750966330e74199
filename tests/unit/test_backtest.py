"""``canary backtest``: a plan's stop criteria replayed over scripted history.

The provider returns numbers scripted per metric and per second since the start, so
each test says exactly what Prometheus would have answered at each check time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from textwrap import dedent

import pytest
from typer.testing import CliRunner

from controller.analysis.verdict import Verdict
from controller.backtest import (
    Action,
    BacktestError,
    backtest_values,
    check_times,
    parse_time,
    replay,
    replayed_criteria,
    report_lines,
    time_range,
)
from controller.cli import app
from controller.metrics.prometheus import MetricsError, Sample, Series
from controller.plan import Plan
from controller.plan_loader import parse_plan

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

PLAN = """
name: unit
variables: {job: api}
analysis: {interval: 10s, window: 1m, inconclusive_limit: 4, error_limit: 3, on_limit: ON_LIMIT}
stages:
  - {name: canary, kind: canary, weight: 10, hold: 1m}
  - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 1m}]}
stop_criteria:
  - name: errors
    judge: ratio_threshold
    max_ratio: 0.05
    min_requests: 100
    sustained_for: SUSTAINED
    errors: errors{service="{{ service }}", version="{{ canary_version }}", job="{{ job }}"}
    total: total{service="{{ service }}", version="{{ canary_version }}", job="{{ job }}"}
"""

BASELINE_PLAN = """
name: unit
stages:
  - {name: canary, kind: canary, weight: 10, hold: 1m}
  - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 1m}]}
analysis: {interval: 10s, window: 1m}
stop_criteria:
  - name: vs_stable
    judge: ratio_to_baseline
    factor: 2
    floor: 0.01
    min_requests: 100
    canary_errors: errors{version="{{ canary_version }}"}
    canary_total: total{version="{{ canary_version }}"}
    baseline_errors: errors{version="{{ stable_version }}"}
    baseline_total: total{version="{{ stable_version }}"}
"""

Script = Callable[[int], float | None]
HEALTHY: dict[str, Script] = {"errors": lambda s: 0.0, "total": lambda s: 1000.0}


def make_plan(on_limit: str = "pause", sustained: str = "20s") -> Plan:
    return parse_plan(plan_text(on_limit, sustained))


def plan_text(on_limit: str = "pause", sustained: str = "20s") -> str:
    return dedent(PLAN).replace("ON_LIMIT", on_limit).replace("SUSTAINED", sustained)


class Scripted:
    """A provider answering each metric (the query's name before ``{``) with a number
    scripted per second since T0; None is no series, ``DOWN`` a failing Prometheus."""

    def __init__(self, series: dict[str, Script], down: Callable[[int], bool] = lambda s: False):
        self.series = series
        self.down = down
        self.queries: list[str] = []

    def instant(self, query: str, at: datetime | None = None) -> list[Sample]:
        assert at is not None and at.tzinfo is not None
        self.queries.append(query)
        second = int((at - T0).total_seconds())
        if self.down(second):
            raise MetricsError(query, "connection failed: Connection refused")
        labels = query.split("{")[1] if "{" in query else ""
        name = query.split("{")[0]
        if 'version="1.0.0"' in labels:
            name = f"stable_{name}"
        value = self.series[name](second)
        return [] if value is None else [Sample({}, value)]

    def range(
        self, query: str, start: datetime, end: datetime, step_seconds: float
    ) -> list[Series]:
        raise AssertionError("no range queries in these plans")


def values(plan: Plan, **overrides: str) -> dict[str, str]:
    return backtest_values(
        plan,
        service="checkout",
        canary_version="1.1.0",
        stable_version="1.0.0",
        overrides=overrides,
    )


def run(plan: Plan, provider: Scripted, seconds: int = 60):
    return replay(plan, provider, values(plan), T0, T0 + timedelta(seconds=seconds))


def actions(result) -> list[str]:
    return [c.decision.action.value for c in result.checks]


def failing_from(start: int, until: int | None = None) -> dict[str, Script]:
    """Half the requests fail from ``start`` (to ``until``): a clear, significant breach."""
    return {
        "errors": lambda s: 500.0 if s >= start and (until is None or s < until) else 0.0,
        "total": lambda s: 1000.0,
    }


def test_a_healthy_canary_continues() -> None:
    provider = Scripted(HEALTHY)
    result = run(make_plan(), provider)
    assert [c.at for c in result.checks] == [T0 + timedelta(seconds=s) for s in range(0, 61, 10)]
    assert actions(result) == ["continue"] * 7
    assert all(m.verdict == Verdict.PASS for c in result.checks for m in c.measurements)
    assert result.outcome.action == Action.CONTINUE
    assert result.outcome.sentence().startswith("would have let the canary continue")
    # The plan's variable default and the built-ins are in the queries.
    assert 'errors{service="checkout", version="1.1.0", job="api"}' in provider.queries


def test_holds_and_promotions_are_replayed_and_the_success_is_the_outcome() -> None:
    """The plan's steps: canary 10 % held 1 m, then 100 % held 1 m. Every check passes,
    so the canary is promoted when its hold is over and the rollout succeeds when the
    last hold is."""
    result = run(make_plan(), Scripted(HEALTHY), seconds=150)
    promoted = [(c.at, c.promoted_to) for c in result.checks if c.promoted_to]
    assert promoted == [
        (T0 + timedelta(seconds=60), "ramp 100%"),
        (T0 + timedelta(seconds=120), "succeeded"),
    ]
    assert [c.step for c in result.checks][5:8] == ["canary 10%", "canary 10%", "ramp 100%"]
    assert result.outcome.action == Action.CONTINUE
    assert result.outcome.succeeded_at == T0 + timedelta(seconds=120)
    assert result.outcome.sentence() == (
        "would have succeeded at 2024-05-01T10:02:00Z: every step's hold over with every "
        "criterion passing (promoted: ramp 100% at 2024-05-01T10:01:00Z, succeeded at "
        "2024-05-01T10:02:00Z)"
    )
    lines = report_lines(result)
    assert "2024-05-01T10:01:00Z  [canary 10% -> ramp 100%] continue" in "\n".join(lines)
    assert result.as_dict()["outcome"]["succeeded_at"] == "2024-05-01T10:02:00Z"


def test_a_breach_holds_promotion_and_a_rollback_stops_the_steps() -> None:
    """A check that is not all-pass never promotes, even after the hold; once the
    canary trips, the steps stop where they were."""
    result = run(make_plan(), Scripted(failing_from(50)), seconds=150)
    assert not [c for c in result.checks if c.promoted_to]
    assert {c.step for c in result.checks} == {"canary 10%"}
    assert result.outcome.action == Action.ROLLBACK and result.outcome.step == "canary 10%"


def test_a_trip_after_the_success_is_said_but_the_success_stands() -> None:
    result = run(make_plan(sustained="0s"), Scripted(failing_from(140)), seconds=150)
    outcome = result.outcome
    assert outcome.action == Action.CONTINUE and outcome.succeeded_at == T0 + timedelta(seconds=120)
    assert "after it, errors would have tripped at 2024-05-01T10:02:20Z" in outcome.reason


def test_var_overrides_a_plan_variable() -> None:
    plan = make_plan()
    provider = Scripted(HEALTHY)
    replay(plan, provider, values(plan, job="web"), T0, T0)
    assert provider.queries[0].endswith('job="web"}')


def test_a_failing_canary_rolls_back_once_the_breach_lasted_sustained_for() -> None:
    result = run(make_plan(sustained="20s"), Scripted(failing_from(20)))
    assert actions(result) == [
        "continue",
        "continue",
        "hold",
        "hold",
        "rollback",
        "rollback",
        "rollback",
    ]
    assert (
        "errors failing for 10s, not yet its sustained_for 20s" in result.checks[3].decision.reason
    )
    outcome = result.outcome
    assert outcome.action == Action.ROLLBACK
    assert outcome.at == T0 + timedelta(seconds=40)
    assert outcome.criterion == "errors"
    assert outcome.reason.startswith("errors failing for 20s (sustained_for 20s): proportion 0.5")
    assert (
        "would have rolled back at 2024-05-01T10:00:40Z (canary 10%): errors failing for 20s"
        in outcome.sentence()
    )


def test_inconclusive_checks_do_not_end_a_breach_and_a_pass_does() -> None:
    gap = {
        "errors": lambda s: None if s in (30, 40) else (500.0 if s >= 20 else 0.0),
        "total": lambda s: None if s in (30, 40) else 1000.0,
    }
    result = run(make_plan(sustained="30s"), Scripted(gap))
    # fail at 20, no data at 30 and 40, fail at 50: the breach began at 20 and trips.
    assert actions(result) == [
        "continue",
        "continue",
        "hold",
        "hold",
        "hold",
        "rollback",
        "rollback",
    ]
    assert result.checks[3].measurements[0].verdict == Verdict.INCONCLUSIVE
    assert result.checks[3].decision.reason == (
        "the breach of errors goes on (10s so far): an inconclusive check neither ends nor "
        "confirms it; errors inconclusive (1 of 4 checks in a row before on_limit)"
    )
    assert result.outcome.at == T0 + timedelta(seconds=50)
    assert "failing for 30s" in result.outcome.reason

    passing_gap = failing_from(20)
    passing_gap["errors"] = lambda s: 0.0 if s == 30 else (500.0 if s >= 20 else 0.0)
    result = run(make_plan(sustained="30s"), Scripted(passing_gap), seconds=80)
    # fail at 20, pass at 30 (the breach ends), fail from 40: trips at 70, not 50.
    assert result.outcome.at == T0 + timedelta(seconds=70)


def test_an_error_streak_pauses_per_on_limit_and_the_paused_canary_is_still_watched() -> None:
    script = failing_from(60)
    result = run(
        make_plan(on_limit="pause", sustained="0s"),
        Scripted(script, down=lambda s: s < 30),
        seconds=70,
    )
    # error_limit 3: errors at 0, 10, 20 -> pause at 20; still watched: trips at 60.
    assert actions(result) == ["hold", "hold"] + ["pause"] * 4 + ["rollback"] * 2
    paused_because = result.checks[2].decision.reason
    assert paused_because.startswith("3 checks in a row ended in an error (last: ")
    assert "Prometheus" in paused_because
    assert paused_because.endswith("; plan policy: pause for a human")
    assert "errors error (2 of 3 checks in a row before on_limit)" in (
        result.checks[1].decision.reason
    )
    assert result.outcome.action == Action.ROLLBACK
    assert "paused at 2024-05-01T10:00:20Z before" in result.outcome.reason

    result = run(make_plan(on_limit="pause"), Scripted(HEALTHY, down=lambda s: s < 30))
    assert result.outcome.action == Action.PAUSE
    assert result.outcome.at == T0 + timedelta(seconds=20)
    assert "would have paused at 2024-05-01T10:00:20Z" in result.outcome.sentence()


def test_a_paused_canary_past_its_progress_deadline_rolls_back_if_the_plan_says_so() -> None:
    plan = make_plan(on_limit="pause, progress_deadline: 20s, on_progress_deadline: rollback")
    result = run(plan, Scripted(HEALTHY, down=lambda s: s < 30))
    # paused at 20; the deadline counts from the first paused check (30): rollback at 50.
    assert actions(result) == ["hold", "hold", "pause", "pause", "pause", "rollback", "pause"]
    assert result.checks[5].decision.reason == (
        "paused with the canary's traffic for 20s (progress deadline 20s); plan policy: roll back"
    )
    assert result.outcome.action == Action.ROLLBACK and result.outcome.criterion is None


def test_an_error_streak_rolls_back_with_on_limit_rollback() -> None:
    result = run(make_plan(on_limit="rollback"), Scripted(HEALTHY, down=lambda s: s < 30))
    assert actions(result)[:4] == ["hold", "hold", "rollback", "continue"]
    assert result.outcome.action == Action.ROLLBACK
    assert result.outcome.criterion is None
    assert result.outcome.reason.endswith("plan policy: roll back")


def test_a_short_error_run_only_holds_and_the_end_says_so() -> None:
    result = run(make_plan(), Scripted(HEALTHY, down=lambda s: s >= 50))
    assert actions(result) == ["continue"] * 5 + ["hold", "hold"]
    assert result.outcome.action == Action.HOLD
    assert result.outcome.sentence().startswith("would still be holding at the end")


def test_the_last_measured_baseline_is_used_when_stable_has_no_traffic() -> None:
    plan = parse_plan(dedent(BASELINE_PLAN))
    script: dict[str, Script] = {
        "errors": lambda s: 5.0,
        "total": lambda s: 1000.0,
        "stable_errors": lambda s: 4.0 if s < 20 else 0.0,
        "stable_total": lambda s: 1000.0 if s < 20 else 0.0,  # 100 % on the canary from 20s
    }
    result = run(plan, Scripted(script), seconds=40)
    assert actions(result) == ["continue"] * 5
    later = result.checks[-1].measurements[0].judgement
    assert "last measured stable proportion" in later.reason
    assert later.details["baseline_rate"] == pytest.approx(0.004)


def test_without_any_measured_baseline_it_is_inconclusive() -> None:
    plan = parse_plan(dedent(BASELINE_PLAN))
    script: dict[str, Script] = {
        "errors": lambda s: 5.0,
        "total": lambda s: 1000.0,
        "stable_errors": lambda s: 0.0,
        "stable_total": lambda s: 0.0,
    }
    result = run(plan, Scripted(script), seconds=0)
    assert result.checks[0].measurements[0].verdict == Verdict.INCONCLUSIVE


def test_json_document_and_text_report() -> None:
    result = run(make_plan(sustained="0s"), Scripted(failing_from(30)), seconds=30)
    document = json.loads(json.dumps(result.as_dict()))
    assert document["from"] == "2024-05-01T10:00:00Z" and document["interval"] == "10s"
    assert [c["decision"] for c in document["checks"]] == ["continue"] * 3 + ["rollback"]
    last = document["checks"][-1]
    assert last["criterion"] == "errors" and last["tripped"] == ["errors"]
    assert last["criteria"][0]["verdict"] == "fail"
    assert document["outcome"]["decision"] == "rollback"
    assert document["outcome"]["at"] == "2024-05-01T10:00:30Z"
    lines = report_lines(result)
    assert lines[-1].startswith("outcome: would have rolled back at 2024-05-01T10:00:30Z")
    assert "2024-05-01T10:00:30Z  [canary 10%] rollback: errors failing for 0s" in "\n".join(lines)
    assert [c["step"] for c in document["checks"]] == ["canary 10%"] * 4


def test_times() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("now", "--to", now) == now
    assert parse_time("-30m", "--from", now) == now - timedelta(minutes=30)
    assert parse_time("2024-05-01T10:00:00Z", "--from", now) == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_time("2024-05-01t12:00:00+02:00", "--from", now) == datetime(
        2024, 5, 1, 10, tzinfo=UTC
    )
    with pytest.raises(BacktestError, match=r"^--from: '2024-05-01T10:00:00' has no time zone"):
        parse_time("2024-05-01T10:00:00", "--from", now)
    with pytest.raises(BacktestError, match=r"^--to: 'soon' is not a time"):
        parse_time("soon", "--to", now)
    with pytest.raises(BacktestError, match=r"^--from: '-5x' is not a relative time"):
        parse_time("-5x", "--from", now)
    with pytest.raises(BacktestError, match=r"^--to: .* is before --from"):
        time_range("-10m", "-20m", now)
    with pytest.raises(BacktestError, match=r"^--to: .* is in the future"):
        time_range("-10m", "2024-05-01T13:00:00Z", now)


def test_too_many_checks_are_refused() -> None:
    assert len(check_times(T0, T0 + timedelta(seconds=25), timedelta(seconds=10))) == 3
    with pytest.raises(BacktestError, match=r"^--from/--to: 86401 checks"):
        check_times(T0, T0 + timedelta(days=1), timedelta(seconds=1))


def test_bad_input_names_the_option() -> None:
    plan = make_plan()
    with pytest.raises(BacktestError, match=r"^--var nope: the plan does not declare it"):
        values(plan, nope="1")
    with pytest.raises(Exception, match=r"^--service: 'a b' is not allowed"):
        backtest_values(
            plan, service="a b", canary_version="1.1.0", stable_version="1.0.0", overrides={}
        )


def test_cli_refuses_a_time_without_zone_without_a_traceback(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan_text())
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            str(plan_file),
            "--service=checkout",
            "--canary=1.1.0",
            "--stable=1.0.0",
            "--from=2024-05-01T10:00:00",
        ],
    )
    assert result.exit_code == 2
    assert "--from: '2024-05-01T10:00:00' has no time zone" in result.output
    assert "Traceback" not in result.output


def test_only_criteria_of_production_stages_are_replayed() -> None:
    text = plan_text().replace(
        "stages:\n", "stages:\n  - {name: soak, kind: soak, environment: staging, duration: 1m}\n"
    )
    text += "  - {name: staging_only, judge: zero_tolerance, stages: [soak], failures: failures}\n"
    plan = parse_plan(text)
    assert [c.name for c in plan.stop_criteria] == ["errors", "staging_only"]
    assert [c.name for c in replayed_criteria(plan)] == ["errors"]
    result = run(plan, Scripted(HEALTHY), seconds=0)
    assert [m.criterion for m in result.checks[0].measurements] == ["errors"]


def test_a_backtest_counts_an_absent_failure_series_as_the_controller_does() -> None:
    """Any failed write, without a total: no series, while the same check's errors
    criterion counts the canary's requests, is 0 failures, not 4 inconclusive checks
    and a pause."""
    text = plan_text() + (
        "  - name: writes\n"
        "    judge: zero_tolerance\n"
        '    failures: write_failures{version="{{ canary_version }}"}\n'
    )
    result = run(parse_plan(text), Scripted({**HEALTHY, "write_failures": lambda s: None}))
    assert set(actions(result)) == {"continue"}, [c.decision.reason for c in result.checks]
    writes = result.checks[0].measurements[1]
    assert writes.verdict == Verdict.PASS
    assert "errors's total shows 1000 canary requests in the same check" in writes.judgement.reason
