"""`canary plan validate` says, per stop criterion, what a query without a series will
mean: 0 errors, no data, or 0 failures only while another criterion of the same
check counts the canary's requests; a criterion a healthy service may never pass is
a warning."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

from typer.testing import CliRunner

from config import PLANS_DIR
from controller.cli import app
from controller.plan_checks import AbsentMeaning, absent_series_meanings
from controller.plan_loader import load_plan, parse_plan

FIVE_XX = """
  - name: http_5xx
    judge: ratio_to_baseline
    {stages}
    canary_errors: sum(increase(http_requests_total{{release="canary", code=~"5.."}}[1m]))
    canary_total: sum(increase(http_requests_total{{release="canary"}}[1m]))
    baseline_errors: sum(increase(http_requests_total{{release="stable", code=~"5.."}}[1m]))
    baseline_total: sum(increase(http_requests_total{{release="stable"}}[1m]))
"""
WRITES = """
  - name: failed_writes
    judge: zero_tolerance
    {extra}
    failures: sum(increase(app_write_failures_total{{release="canary"}}[30s]))
"""


def plan_text(five_xx_stages: str | None = "", writes_extra: str = "") -> str:
    """A user's plan: a 5xx criterion (in some stages, or none) and "any failed write"
    without a total."""
    criteria = ""
    if five_xx_stages is not None:
        criteria += FIVE_XX.format(stages=five_xx_stages)
    criteria += WRITES.format(extra=writes_extra)
    return (
        dedent("""\
        name: mine
        stages:
          - {name: canary, kind: canary, weight: 10, hold: 1m}
          - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 1m}]}
        stop_criteria:""")
        + criteria
    )


def meanings(text: str) -> dict[str, AbsentMeaning]:
    return {m.criterion: m for m in absent_series_meanings(parse_plan(text))}


def test_failures_without_total_borrow_the_checks_canary_count() -> None:
    found = meanings(plan_text())
    assert found["failed_writes"] == AbsentMeaning(
        "failed_writes",
        "no failures series: 0 failures when http_5xx counts at least 1 canary request in "
        "the same check; otherwise inconclusive (no data)",
    )
    assert "0 errors" in found["http_5xx"].meaning and not found["http_5xx"].warning


def test_with_nothing_counting_the_canarys_requests_it_is_a_warning() -> None:
    found = meanings(plan_text(five_xx_stages=None))["failed_writes"]
    assert found.warning
    assert found.meaning.startswith(
        "no failures series: inconclusive (no data) at every check until the first failure"
    )


def test_a_stage_where_nothing_counts_the_canarys_requests_is_named() -> None:
    found = meanings(plan_text(five_xx_stages="stages: [canary]"))["failed_writes"]
    assert found.warning
    assert "in ramp no other criterion counts them" in found.meaning


def test_switched_off_it_warns_that_a_lazy_failure_series_never_passes() -> None:
    found = meanings(plan_text(writes_extra="absent_errors_are_zero: false"))["failed_writes"]
    assert found.warning and "never passes it" in found.meaning


def test_the_shipped_plans_have_no_warning() -> None:
    for path in sorted(PLANS_DIR.glob("*.yaml")):
        found = absent_series_meanings(load_plan(path))
        assert len(found) == 6, path
        assert not [m for m in found if m.warning], path


def test_plan_validate_prints_them_and_puts_them_in_its_json(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(plan_text(five_xx_stages=None))
    result = CliRunner().invoke(app, ["plan", "validate", str(path)])
    assert result.exit_code == 0, result.output  # a warning is not a refusal
    assert "when a query returns no series:" in result.stdout
    assert "  failed_writes: no failures series: inconclusive (no data) at every check" in (
        result.stdout
    )
    assert result.stdout.rstrip().endswith("(give it a total) (warning)")
    result = CliRunner().invoke(app, ["plan", "validate", str(path), "--json"])
    (absent,) = json.loads(result.stdout)["absent_series"]
    assert absent["criterion"] == "failed_writes" and absent["warning"] is True
