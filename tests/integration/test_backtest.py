"""``canary backtest`` on a real Prometheus that scraped the demo services: a stretch of
history with a healthy canary, then one with a canary failing 60 % of its requests,
each replayed with the shipped demo plan by the command a user runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from config import PLANS_DIR
from controller.backtest import format_time
from controller.demo.loadgen import LoadGenerator
from controller.lab import PrometheusServer
from controller.plan_loader import load_plan
from tests.integration.conftest import CANARY_VERSION, SERVICE, STABLE_VERSION, DemoPair

pytestmark = pytest.mark.integration

PLAN = PLANS_DIR / "demo.yaml"
WINDOW = load_plan(PLAN).analysis.window.total_seconds()  # 8s in the demo plan


def backtest(prometheus: PrometheusServer, start: datetime, end: datetime) -> dict[str, Any]:
    """Run the real command and return its JSON document."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "backtest",
            str(PLAN),
            f"--service={SERVICE}",
            f"--canary={CANARY_VERSION}",
            f"--stable={STABLE_VERSION}",
            f"--from={format_time(start)}",
            f"--to={format_time(end)}",
            f"--prometheus={prometheus.url}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def verdicts(check: dict[str, Any]) -> dict[str, str]:
    return {c["criterion"]: c["verdict"] for c in check["criteria"]}


def wait_for_history(prometheus: PrometheusServer, seconds: float, timeout: float = 30) -> None:
    """Wait until Prometheus has scraped the canary for ``seconds`` (a Prometheus started
    for this test has no history yet, and a window without it is inconclusive)."""
    promql = f'count_over_time(demo_queue_lag_seconds{{version="{CANARY_VERSION}"}}[{seconds:g}s])'
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(promql)
        if result and float(result[0]["value"][1]) >= seconds - 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus has no {seconds:g}s of history: {result}")
        time.sleep(0.5)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def test_backtest_lets_a_healthy_canary_continue_and_rolls_a_failing_one_back(
    demo_pair: DemoPair, prometheus: PrometheusServer
) -> None:
    load = LoadGenerator(
        [(f"{demo_pair.stable.url}/checkout", 30.0), (f"{demo_pair.canary.url}/checkout", 30.0)]
    )
    with load:
        time.sleep(WINDOW + 2)  # a whole window of healthy traffic before the replay starts
        wait_for_history(prometheus, WINDOW + 2)
        healthy_from = now()
        time.sleep(10)  # past the canary step's 8 s hold
        healthy_to = now()
        demo_pair.canary.set_faults(error_rate=0.6)
        faulty_from = now()
        time.sleep(10)
        faulty_to = now()
    time.sleep(2)  # the last scrape of the faulty stretch is in

    healthy = backtest(prometheus, healthy_from, healthy_to)
    assert healthy["interval"] == "1s" and len(healthy["checks"]) >= 6
    for check in healthy["checks"]:
        assert set(verdicts(check).values()) == {"pass"}, json.dumps(check, indent=1)[:3000]
        assert check["decision"] == "continue", check
    assert healthy["outcome"]["decision"] == "continue"
    assert healthy["outcome"]["summary"].startswith("would have let the canary continue (ramp 25%)")
    # The canary's hold is 8 s: the check after it promotes, as the engine would.
    (promotion,) = [c for c in healthy["checks"] if c["promoted_to"]]
    assert promotion["promoted_to"] == "ramp 25%" and promotion["step"] == "canary 10%"
    waited = datetime.fromisoformat(promotion["at"]) - datetime.fromisoformat(
        healthy["checks"][0]["at"]
    )
    assert waited == timedelta(seconds=8)

    faulty = backtest(prometheus, faulty_from, faulty_to)
    outcome = faulty["outcome"]
    assert outcome["decision"] == "rollback", outcome
    assert outcome["criterion"] == "http_5xx_vs_baseline"
    first_fail = next(
        datetime.fromisoformat(c["at"])
        for c in faulty["checks"]
        if verdicts(c)["http_5xx_vs_baseline"] == "fail"
    )
    # sustained_for 3s: the rollback comes 3s after the first failing check, not before.
    assert datetime.fromisoformat(outcome["at"]) == first_fail + timedelta(seconds=3)
    assert outcome["summary"].startswith(f"would have rolled back at {outcome['at']} (")
    assert "): http_5xx_vs_baseline failing for 3s" in outcome["summary"]
    decisions = [c["decision"] for c in faulty["checks"]]
    rollback_index = decisions.index("rollback")
    assert decisions[rollback_index - 3 : rollback_index] == ["hold"] * 3
    # Every other criterion kept passing: the 5xx criterion alone caught it.
    last = verdicts(faulty["checks"][-1])
    assert last.pop("http_5xx_vs_baseline") == "fail"
    assert set(last.values()) == {"pass"}, last
