"""`canary plan validate --check-against URL`: each query of a plan run once against a
real Prometheus scraping the demo services, through the command as a user runs it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from config import PLANS_DIR
from controller.lab import PrometheusServer
from tests.integration.conftest import CANARY_VERSION, SERVICE, STABLE_VERSION
from tests.integration.test_cli import canary

pytestmark = pytest.mark.integration

DEMO = PLANS_DIR / "demo.yaml"
BACKLOG = (
    'max(demo_queue_lag_seconds{service="{{ service }}", version="{{ canary_version }}", '
    'environment="production"})'
)


def scraped(prometheus: PrometheusServer, targets: int = 2, within: float = 30.0) -> None:
    """Wait until Prometheus has scraped the demo services once."""
    deadline = time.monotonic() + within
    while len(prometheus.query('up{job="lab"} == 1')) < targets:
        assert time.monotonic() < deadline, "Prometheus never scraped the demo services"
        time.sleep(0.5)


def validate(*args: str) -> tuple[int, str, str]:
    result = canary("plan", "validate", *args)
    assert "Traceback" not in result.stderr + result.stdout
    return result.returncode, result.stdout, result.stderr


def test_the_demo_plan_checks_out_against_the_demo_services(
    prometheus: PrometheusServer,
) -> None:
    scraped(prometheus)
    code, stdout, stderr = validate(
        str(DEMO),
        "--check-against",
        prometheus.url,
        "--service",
        SERVICE,
        "--version",
        CANARY_VERSION,
        "--stable",
        STABLE_VERSION,
    )
    assert code == 0, stdout + stderr
    assert "plan 'demo' is valid" in stdout  # the plain output first, as before
    assert f"against {prometheus.url}:" in stdout
    assert "  ok       gates.targets_up[0].query (prometheus-targets): 2 series" in stdout
    assert "  ok       stages[3].backlog.query (verify): 1 series" in stdout
    # No alert rules in the lab: ALERTS has no series, a warning and not a failure.
    assert "  empty    gates.no_firing_alerts (gates): no series (warning)" in stdout
    assert " 0 failing" in stdout.splitlines()[-1]


def test_queries_prometheus_refuses_fail_the_check(
    prometheus: PrometheusServer, tmp_path: Path
) -> None:
    scraped(prometheus)
    text = DEMO.read_text()
    assert text.count(BACKLOG) == 1 and text.count('up{job="{{ scrape_job }}"}') == 1
    # Both parse, so the plan is valid; this Prometheus cannot run either as an instant
    # query: an experimental function, and a range vector.
    text = text.replace(BACKLOG, 'sort_by_label(demo_queue_lag_seconds, "version")')
    text = text.replace('up{job="{{ scrape_job }}"}', 'up{job="{{ scrape_job }}"}[1m]')
    plan = tmp_path / "refused.yaml"
    plan.write_text(text)
    code, stdout, stderr = validate(str(plan), "--check-against", prometheus.url)
    assert code == 1, stdout + stderr
    lines = stdout.splitlines()
    backlog = next(line for line in lines if "stages[3].backlog.query" in line)
    assert backlog.startswith("  failing  ") and "sort_by_label" in backlog
    targets = next(line for line in lines if "gates.targets_up[0].query" in line)
    assert targets.startswith("  failing  ") and "range vector" in targets
    assert "           query: sort_by_label(demo_queue_lag_seconds" in stdout
    assert lines[-1].endswith(" 2 failing")


def test_an_unreachable_prometheus_fails_every_query() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, stdout, _ = validate(str(DEMO), "--check-against", f"http://127.0.0.1:{port}")
    assert code == 1
    failing = [line for line in stdout.splitlines() if line.startswith("  failing  ")]
    assert failing and all("connection failed" in line for line in failing)
    assert " 0 ok, 0 empty (warning), " in stdout


def test_a_url_that_is_not_prometheus_is_a_clear_error() -> None:
    code, _, stderr = validate(str(DEMO), "--check-against", "prometheus:9090")
    assert code == 2
    assert "error: check-against: not an http(s) Prometheus URL" in stderr


def test_a_promql_typo_exits_2_naming_field_and_line(tmp_path: Path) -> None:
    text = DEMO.read_text().replace(BACKLOG, BACKLOG.replace("})", "}"))
    plan = tmp_path / "typo.yaml"
    plan.write_text(text)
    code, stdout, stderr = validate(str(plan))
    assert code == 2 and stdout == ""
    rows = enumerate(text.splitlines(), 1)
    line = next(i for i, row in rows if "query: max(demo_queue_lag" in row)
    assert f"{plan}:{line}: stages[3].backlog.query: not valid PromQL: " in stderr
