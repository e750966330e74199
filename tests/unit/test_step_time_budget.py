"""A step never outlives its task: plans whose checks could not finish within one
advance are refused, the settings leave room for that budget, and running out of
time is an error that decides nothing, never a failed check."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import pytest
import yaml

from config import PLANS_DIR
from config.settings import SettingsError, get_settings
from controller import budget, checks, hooks, soak, timeouts
from controller.analysis.runner import measure
from controller.engine import advance
from controller.lab.stack import LabSettings
from controller.plan import CanaryDisable, CommandCheck, HttpCheck, Plan, RatioThreshold
from controller.plan_loader import PlanError, load_plan, parse_plan
from controller.runtime import Runtime
from tests.unit.test_state_machine import (
    Clock,
    FakeMetrics,
    FakeRouter,
    make_plan,
    soak_plan,
    sqlite_runtime,
    start,
    state,
)


class OutOfTime(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, which the domain never imports."""


@dataclass
class SlowMetrics(FakeMetrics):
    """Prometheus as usual, or the task's time running out in the middle of a query."""

    out_of_time: bool = False

    def instant(self, query: str, at: datetime | None = None) -> list:
        if self.out_of_time:
            raise OutOfTime()
        return super().instant(query, at)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Runtime, SlowMetrics, FakeRouter, Clock, list[str]]:
    """A real SQLite store; metrics, router and clock are fakes."""
    metrics, router, clock, enqueued = SlowMetrics(), FakeRouter(), Clock(), []
    runtime = sqlite_runtime(tmp_path, metrics, router, clock, enqueue_rollback=enqueued.append)
    return runtime, metrics, router, clock, enqueued


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> type[OutOfTime]:
    monkeypatch.setattr(timeouts, "_registered", (OutOfTime,))
    return OutOfTime


# -- the budget, at plan load -------------------------------------------------------

CRITERION = """
stop_criteria:
  - name: writes
    judge: zero_tolerance
    failures: sum(increase(failed_writes_total{service="{{ service }}"}[{{ window }}]))
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PlanError) as caught:
        parse_plan(dedent(text) + CRITERION, source="p.yaml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


@pytest.mark.parametrize("path", sorted(PLANS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_plans_fit_the_budget(path) -> None:  # noqa: ANN001
    plan = load_plan(path)
    assert budget.budget_problems(plan) == []
    assert sum(w.seconds for w in budget.gates_work(plan)) <= timeouts.STEP_BUDGET_SECONDS
    for step in plan.steps():
        for first in (True, False):
            work = budget.step_work(plan, step, first)
            assert sum(w.seconds for w in work) <= timeouts.STEP_BUDGET_SECONDS


def test_a_smoke_check_too_long_for_one_advance_is_refused_with_its_field_and_line() -> None:
    found = problems("""\
        name: p
        stages:
          - name: soak
            kind: soak
            duration: 1m
            smoke:
              commands:
                - {name: suite, command: [pytest, smoke/], timeout: 30s}
                - {name: journeys, command: [pytest, journeys/], timeout: 15s}
          - {name: c, kind: canary, weight: 100, hold: 1m}
        """)
    ((line, path, message),) = found
    assert (line, path) == (7, "stages[0].smoke")
    assert message.startswith(
        "the checks of step 'soak' can take 31s in one advance (longest smoke check 30s, "
        "1 Prometheus query 1s); the budget is 30s"
    )
    assert "move it to CI" in message


def test_a_smoke_suite_longer_than_one_advance_is_accepted_when_each_check_fits() -> None:
    plan = parse_plan(
        dedent("""\
        name: p
        stages:
          - name: soak
            kind: soak
            duration: 1m
            smoke:
              commands:
                - {name: a, command: [pytest, a/], timeout: 20s}
                - {name: b, command: [pytest, b/], timeout: 20s}
                - {name: c, command: [pytest, c/], timeout: 20s}
          - {name: c, kind: canary, weight: 100, hold: 1m}
        """)
        + CRITERION
    )
    (soak_step, _) = plan.steps()
    assert budget.budget_problems(plan) == []
    assert budget.smoke_allowance(plan, soak_step) == timeouts.STEP_BUDGET_SECONDS - 1


def test_slow_gates_are_refused_and_name_the_slowest_field() -> None:
    ((line, path, message),) = problems("""\
        name: p
        stages: [{name: c, kind: canary, weight: 100, hold: 1m}]
        gates:
          http: [{name: health, url: "http://x/healthz", timeout: 10s}]
          commands:
            - {name: ci, command: [ci-status], timeout: 25s}
        """)
    assert (line, path) == (6, "gates.commands")
    assert message.startswith("the preflight gates can take 35s in one advance (HTTP checks 10s")


def test_each_over_budget_stage_is_named_once() -> None:
    criterion = yaml.safe_load(CRITERION)["stop_criteria"][0]
    data = {
        "name": "p",
        "stages": [
            {"name": "c", "kind": "canary", "weight": 10, "hold": "1m"},
            {
                "name": "r",
                "kind": "ramp",
                "steps": [{"weight": w, "hold": "1m"} for w in (50, 100)],
            },
        ],
        "stop_criteria": [{**criterion, "name": f"writes-{i}"} for i in range(31)],
    }
    with pytest.raises(PlanError) as caught:
        parse_plan(yaml.safe_dump(data))
    found = [(p.path, p.message) for p in caught.value.problems]
    assert [path for path, _ in found] == ["stop_criteria", "stop_criteria"]
    assert "step 'c 10%' can take 31s" in found[0][1]
    assert "step 'r 50%' can take 31s" in found[1][1]  # not again for 'r 100%'
    assert "let fewer stop criteria apply to this stage" in found[0][1]


def test_an_http_check_waits_no_longer_than_its_latency_limit() -> None:
    check = HttpCheck(name="h", url="http://x/", timeout="10s", max_latency="1s")
    assert checks.wait_seconds(check) == 1.0
    assert checks.wait_seconds(HttpCheck(name="h", url="http://x/", timeout="3s")) == 3.0


def test_a_load_burst_is_bounded_by_its_requests_and_its_start_window() -> None:
    assert soak.worst_case_seconds(0) == 0
    assert soak.worst_case_seconds(5) == soak.REQUEST_TIMEOUT_SECONDS  # one wave
    assert soak.worst_case_seconds(10_000) == (
        soak.START_WITHIN_SECONDS + soak.REQUEST_TIMEOUT_SECONDS
    )


class SlowServer:
    """Answers every request after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # every connection of a burst accepted at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer(0.5)
    yield server
    server.server.shutdown()


def test_a_slow_endpoint_makes_a_burst_smaller_not_longer(
    slow_server: SlowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(soak, "START_WITHIN_SECONDS", 0.2)
    started = time.monotonic()
    sent, failed = soak.send_burst(slow_server.url, 3 * soak.CONCURRENCY)
    assert 0 < sent < 3 * soak.CONCURRENCY and failed == 0
    assert time.monotonic() - started < 1.5  # one wave, not three


# -- the settings leave room for the budget -------------------------------------------


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("CANARY_TASK_TIME_LIMIT_SECONDS", "CANARY_LEASE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_a_soft_time_limit_within_the_budget_is_refused(
    fresh_settings: pytest.MonkeyPatch,
) -> None:
    fresh_settings.setenv("CANARY_TASK_TIME_LIMIT_SECONDS", "35")
    with pytest.raises(SettingsError) as caught:
        get_settings()
    message = str(caught.value)
    assert "CANARY_TASK_TIME_LIMIT_SECONDS=35 gives a soft time limit of 30s" in message
    assert "set it above 35" in message


def test_default_and_lab_time_limits_leave_room_for_the_budget(
    fresh_settings: pytest.MonkeyPatch,
) -> None:
    assert get_settings().task_soft_time_limit_seconds > timeouts.STEP_BUDGET_SECONDS
    lab = LabSettings()
    fresh_settings.setenv("CANARY_TASK_TIME_LIMIT_SECONDS", str(lab.task_time_limit_seconds))
    fresh_settings.setenv("CANARY_LEASE_SECONDS", str(lab.lease_seconds))
    get_settings.cache_clear()
    assert get_settings().task_soft_time_limit_seconds > timeouts.STEP_BUDGET_SECONDS


def test_the_worker_registers_celerys_soft_time_limit() -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    import tasks.app  # noqa: F401 - registers at import

    assert SoftTimeLimitExceeded in timeouts.out_of_time()


# -- running out of time is never a verdict -------------------------------------------


class RaisingClient:
    def stream(self, *_args: Any, **_kwargs: Any) -> httpx.Response:
        raise OutOfTime()


class RaisingProvider:
    def instant(self, query: str, at: datetime | None = None) -> list:
        raise OutOfTime()

    def range(self, *_args: Any) -> list:
        raise OutOfTime()


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise OutOfTime()


def test_checks_pass_the_time_limit_on_and_say_what_was_running(
    registered: type[OutOfTime], monkeypatch: pytest.MonkeyPatch
) -> None:
    check = HttpCheck(name="journey", url="http://x/")
    with pytest.raises(OutOfTime) as caught:
        checks.run_http_check(check, {}, RaisingClient())  # type: ignore[arg-type]
    assert timeouts.what_was_running(caught.value) == "HTTP check journey"

    monkeypatch.setattr(subprocess, "run", _raise)
    with pytest.raises(OutOfTime) as caught:
        checks.run_command(CommandCheck(name="suite", command=["pytest"]), {})
    assert timeouts.what_was_running(caught.value) == "command suite"

    criterion = RatioThreshold(
        judge="ratio_threshold", name="auth", errors="e", total="t", max_ratio=0.1
    )
    with pytest.raises(OutOfTime) as caught:
        measure(criterion, RaisingProvider(), {}, timedelta(minutes=1), datetime.now().astimezone())
    assert timeouts.what_was_running(caught.value) == "stop criterion auth"

    monkeypatch.setattr(httpx.Client, "get", _raise)
    with pytest.raises(OutOfTime):
        soak.send_burst("http://127.0.0.1:9/", 3)

    monkeypatch.setattr(httpx.Client, "request", _raise)
    with pytest.raises(OutOfTime):
        hooks.run_hook(CanaryDisable(http={"url": "http://x/disable"}), {})


def test_only_registered_types_mean_out_of_time() -> None:
    check = HttpCheck(name="journey", url="http://x/")
    ok, detail = checks.run_http_check(check, {}, RaisingClient())  # type: ignore[arg-type]
    assert not ok and "OutOfTime" in detail


def test_running_out_of_time_mid_measurement_is_an_error_never_a_fail(
    world: tuple, registered: type[OutOfTime]
) -> None:
    runtime, metrics, router, clock, enqueued = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    clock.now += timedelta(seconds=30)  # the hold is over: this advance would promote
    metrics.out_of_time = True
    result = advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert result.acted and "ran out of time" in result.summary
    assert rollout.state == "running" and rollout.step_index == 0 and enqueued == []
    assert [e.kind for e in events if e.kind in ("decision", "measurement")] == ["measurement"]
    error = events[-1]
    assert error.kind == "error" and error.message.startswith("step ran out of time after ")
    assert "stop criterion errors; nothing decided, checked again in 5s" in error.message
    assert rollout.next_check_at == clock() + timedelta(seconds=5)  # the plan's interval
    assert rollout.lease_owner is None and router.history == [10]

    metrics.out_of_time = False
    clock.now = rollout.next_check_at
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.step_index == 1  # promoted on a real measurement, not on the lost one
    assert [e.data["verdict"] for e in events if e.kind == "measurement"] == ["pass", "pass"]


def test_running_out_of_time_in_the_smoke_suite_never_rolls_back(
    world: tuple, registered: type[OutOfTime], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, _, _, clock, enqueued = world
    plan = soak_plan(smoke={"commands": [{"name": "suite", "command": ["true"]}]})
    rollout_id = start(runtime, plan)
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", _raise)
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "pending" and enqueued == []  # nothing of the step was written
    assert "smoke_done" not in (rollout.analysis or {})
    assert not [e for e in events if e.kind in ("smoke", "decision")]
    assert [e for e in events if e.kind == "error"][-1].data["running"] == "command suite"

    monkeypatch.setattr(subprocess, "run", real_run)
    clock.now = rollout.next_check_at
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    smoke = [e for e in events if e.kind == "smoke"]
    assert rollout.state == "running" and len(smoke) == 1 and smoke[0].data["ok"]


def split_suite_plan(*commands: list[str]) -> Plan:
    """A soak whose smoke commands each take more than half of what an advance leaves
    for the suite, so one runs per advance."""
    names = [{"name": f"check-{i}", "command": c} for i, c in enumerate(commands, 1)]
    plan = soak_plan(smoke={"commands": names})
    allowance = budget.smoke_allowance(plan, plan.steps()[0])
    for check in names:
        check["timeout"] = f"{int(allowance // 2) + 1}s"
    plan = soak_plan(smoke={"commands": names})
    assert budget.budget_problems(plan) == []
    return plan


def test_a_smoke_suite_longer_than_one_advance_runs_over_several_and_holds_promotion(
    world: tuple,
) -> None:
    runtime, _, router, clock, _ = world
    rollout_id = start(runtime, split_suite_plan(["true"], ["true"], ["true"]))
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    (smoke,) = [e for e in events if e.kind == "smoke"]
    assert "1 of 3 checks passed so far; 2 more at the next advance" in smoke.message
    assert smoke.data["complete"] is False and rollout.next_check_at == clock.now

    clock.now += timedelta(seconds=30)  # the soak's 10 s hold is over
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.step_index == 0, "promoted with a smoke check not yet run"
    assert [e.data["complete"] for e in events if e.kind == "smoke"] == [False, False]

    clock.now += timedelta(seconds=1)
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    last = [e for e in events if e.kind == "smoke"][-1]
    assert last.data["complete"] and last.data["ok"]
    assert [c["name"] for c in last.data["checks"]] == ["check-1", "check-2", "check-3"]
    assert rollout.step_index == 1 and "smoke_progress" not in rollout.analysis
    assert [e for e in events if e.kind == "measurement"], "not measured while the suite ran"


def test_a_smoke_check_failing_in_a_later_advance_rolls_back_there(world: tuple) -> None:
    runtime, _, router, _, _ = world
    rollout_id = start(runtime, split_suite_plan(["true"], ["false"], ["true"]))
    advance(runtime, rollout_id)
    assert state(runtime, rollout_id)[0].state == "running"
    advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert rollout.state == "rolling_back" and "check-2: exit 1" in rollout.reason
    last = [e for e in events if e.kind == "smoke"][-1]
    assert last.data["complete"] and not last.data["ok"]
    assert [c["name"] for c in last.data["checks"]] == ["check-1", "check-2"]
    assert router.history == [0]


def test_preflight_gates_that_take_time_get_an_advance_of_their_own(world: tuple) -> None:
    runtime, _, router, clock, _ = world
    data = make_plan().model_dump(mode="json")
    data["gates"] = {"commands": [{"name": "ci", "command": ["true"]}]}
    rollout_id = start(runtime, Plan.from_data(data))
    result = advance(runtime, rollout_id)
    rollout, events = state(runtime, rollout_id)
    assert "preflight gates passed" in result.summary and router.history == []
    assert [e.kind for e in events][-1] == "gates_passed"
    assert rollout.next_check_at == clock()
    advance(runtime, rollout_id)
    assert router.history == [10]


def test_gates_without_checks_do_not_cost_an_advance(world: tuple) -> None:
    runtime, _, router, _, _ = world
    rollout_id = start(runtime, make_plan())
    advance(runtime, rollout_id)
    assert router.history == [10]
