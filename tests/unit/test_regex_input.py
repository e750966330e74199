"""Patterns from input (override patterns, alert matchers) are RE2: linear-time
matching, Alertmanager's syntax, and refusals that say why."""

from __future__ import annotations

import pytest

from controller.plan import Plan
from controller.plan_checks import MatcherError, parse_matcher
from controller.regex_input import PatternError, compile_pattern
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
