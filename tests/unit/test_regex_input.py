"""Patterns from input (override patterns, alert matchers) are RE2: linear-time
matching, Alertmanager's syntax, and refusals that say why."""

from __future__ import annotations

import pytest
import yaml

from config import PLANS_DIR
from controller.alerts import Alert, match_alert
from controller.plan import Plan
from controller.plan_checks import MatcherError, parse_matcher
from controller.plan_loader import PlanError, load_plan, parse_plan
from controller.regex_input import PatternError, compile_pattern, matches_whole
from controller.store.models import Rollout
from tests.unit.test_start_input import plan_with_hook


def test_a_pattern_that_backtracks_for_ever_in_re_answers_at_once() -> None:
    """``(a+)+$`` on thirty ``a`` and a ``!`` takes Python's re about 2**30 steps: an
    operator's variable value or an alert's label would hold the process."""
    assert compile_pattern("(a+)+$").fullmatch("a" * 30 + "!") is None
    assert compile_pattern("(a+)+$").fullmatch("a" * 30) is not None


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", r"invalid escape sequence: \1"),
        ("(?=pay)", "invalid perl operator: (?="),
        ("(pay", "missing ): (pay"),
        ("a{1001}", "invalid repetition size: {1001}"),
    ],
)
def test_what_re2_leaves_out_is_refused_with_its_reason(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern(pattern)
    assert str(caught.value) == reason  # words, not b'...'


def test_a_refused_pattern_writes_nothing_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PatternError):
        compile_pattern("(unclosed")
    assert capfd.readouterr().err == ""


def test_an_override_pattern_is_anchored_and_refused_by_field() -> None:
    data = plan_with_hook().model_dump(mode="json")
    plan = Plan.from_data({**data, "overridable": {"team": "pay|ops"}})
    assert plan.override_problem("team", "ops") is None
    assert "does not match" in (plan.override_problem("team", "payments") or "")
    with pytest.raises(ValueError, match=r"team: not a regular expression: invalid perl"):
        Plan.from_data({**data, "overridable": {"team": "(?!admin).*"}})


def test_a_matcher_regex_means_what_alertmanager_makes_of_it() -> None:
    matcher = parse_matcher('team=~"pay|ops"')
    assert matcher.matches({"team": "pay"}) and matcher.matches({"team": "ops"})
    assert not matcher.matches({"team": "payments"}) and not matcher.matches({})
    with pytest.raises(MatcherError, match=r"not a valid regular expression: invalid escape"):
        parse_matcher(r'team=~"(p)\\1"')


# --- Plans stored before patterns were RE2 ------------------------------------------


def stored_plan_with(**changes: object) -> dict:
    """The demo plan as a rollout stored it before the upgrade, with ``changes``."""
    data = load_plan(PLANS_DIR / "demo.yaml").model_dump(mode="json")
    data.update(changes)
    return data


def test_a_stored_plan_with_a_pattern_re2_refuses_still_loads_and_matches_as_re_did() -> None:
    data = stored_plan_with(overridable={"scrape_job": "(?!admin)[a-z]+"})
    with pytest.raises(PlanError):
        parse_plan(yaml.safe_dump(data))  # as new input: refused
    plan = Plan.from_stored(data)  # a running rollout's: loads
    pattern = compile_pattern(plan.overridable["scrape_job"], stored=True)
    assert matches_whole(pattern, "lab") and not matches_whole(pattern, "admin")


def test_a_stored_plans_alert_matcher_re2_refuses_still_rolls_back() -> None:
    matchers = ['severity="critical"', 'team=~"(?!ops).*"']
    running = Rollout(
        id="r-stored-before-re2",
        service="checkout",
        canary_version="2.0",
        stable_version="1.0",
        plan=stored_plan_with(alerts={"matchers": matchers, "service_label": "service"}),
        state="running",
    )
    labels = {"alertname": "Canary5xx", "severity": "critical", "service": "checkout"}
    firing = Alert(status="firing", labels={**labels, "team": "pay"}, fingerprint="abc")
    assert [m.action for m in match_alert(firing, [running])] == ["rollback"]
    ignored = Alert(status="firing", labels={**labels, "team": "ops"}, fingerprint="abd")
    assert [m.action for m in match_alert(ignored, [running])] == ["ignored"]


def test_text_re2_cannot_encode_is_matched_or_refused_never_raised() -> None:
    lone = "pay\ud800"
    assert parse_matcher('team=~"pay.*"').matches({"team": lone})
    assert not parse_matcher('team!~"pay.*"').matches({"team": lone})
    with pytest.raises(PatternError, match="lone surrogate"):
        compile_pattern("pay\ud800")
