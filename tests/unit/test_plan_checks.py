"""Plans checked before anything moves: every PromQL query parses once rendered with
sample values, and every alert matcher parses with Alertmanager's grammar and matches
exactly as it validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from config import PLANS_DIR
from controller.alerts import matchers_hold
from controller.cli import app
from controller.plan import Plan
from controller.plan_checks import (
    MAX_PROMQL_CHARS,
    MAX_PROMQL_NESTING,
    MatcherError,
    parse_matcher,
    plan_problems,
    plan_queries,
    promql_error,
    sample_values,
)
from controller.plan_loader import PlanError, load_plan, parse_plan
from controller.promql_shape import nesting as promql_nesting

# Every kind of query field, with templates that only parse once rendered.
BASE = """\
name: checks
variables:
  job: "{{ service }}-api"
  selector: 'env="prod"'
traffic:
  stable_server: blue
  canary_server: green
  slot_urls: {blue: "http://{{ service }}-blue:8080", green: "http://{{ service }}-green:8080"}
analysis:
  window: 5m
gates:
  targets_up:
    - name: targets
      query: up{job="{{ job }}"}
  no_firing_alerts: ALERTS{alertstate="firing", service="{{ service }}"}
stages:
  - name: soak
    kind: soak
    environment: staging
    duration: 10m
    alerts_quiet: ALERTS{alertstate="firing", environment="{{ environment }}"}
  - {name: canary, kind: canary, weight: 10, hold: 10m}
  - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 10m}]}
  - name: verify
    kind: verify
    duration: 5m
    alerts_quiet: ALERTS{alertstate="firing", severity="critical", service="{{ service }}"}
    backlog:
      query: max(queue_lag_seconds{service="{{ service }}", {{ selector }} })
      max: 5
stop_criteria:
  - name: errors
    judge: ratio_threshold
    max_ratio: 0.02
    window: 2m
    errors: sum(increase(http_requests_total{service="{{ service }}", code=~"5.."}[{{ window }}]))
    total: sum(increase(http_requests_total{service="{{ service }}"}[{{ window }}]))
  - name: writes
    judge: zero_tolerance
    failures: sum(increase(failed_writes_total{version="{{ canary_version }}"}[{{ window }}]))
alerts:
  matchers: ['severity="critical"', 'team=~"pay.*"']
"""


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def problems_of(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PlanError) as caught:
        parse_plan(text, source="p.yaml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def test_base_plan_is_valid_once_rendered() -> None:
    plan = parse_plan(BASE)
    assert plan_problems(plan) == []
    # The raw template is not PromQL; the rendered query is.
    assert promql_error(plan.stop_criteria[0].queries()["errors"]) is not None


def test_queries_are_rendered_like_a_rollout_renders_them() -> None:
    plan = parse_plan(BASE)
    values = sample_values(plan)
    assert values["stable_url"] == "http://sample-blue:8080"
    assert values["canary_slot"] == "green"
    rendered = {q.path: q.text for q in plan_queries(plan)}
    assert set(rendered) == {
        "stop_criteria[0].errors",
        "stop_criteria[0].total",
        "stop_criteria[1].failures",
        "gates.targets_up[0].query",
        "gates.no_firing_alerts",
        "stages[0].alerts_quiet",
        "stages[3].alerts_quiet",
        "stages[3].backlog.query",
    }
    assert rendered["stop_criteria[0].total"].endswith("[2m]))")  # the criterion's window
    assert rendered["stop_criteria[1].failures"] == (
        'sum(increase(failed_writes_total{version="1.1.0"}[5m]))'  # the plan's window
    )
    assert rendered["gates.targets_up[0].query"] == 'up{job="sample-api"}'  # variable default
    assert 'environment="staging"' in rendered["stages[0].alerts_quiet"]  # the soak's
    assert rendered["stages[3].backlog.query"] == (
        'max(queue_lag_seconds{service="sample", env="prod" })'
    )


@pytest.mark.parametrize(
    ("old", "new", "path", "line_needle", "parser_says"),
    [
        (
            'code=~"5.."}[{{ window }}]))',
            'code=~"5.."}[{{ window }}])',
            "stop_criteria[0].errors",
            "errors: sum(",
            "unclosed left parenthesis",
        ),
        (
            "[{{ window }}]))\nalerts",
            "[{{ window }}))\nalerts",
            "stop_criteria[1].failures",
            "failures:",
            "unexpected character inside brackets: ')'",
        ),
        (
            'up{job="{{ job }}"}',
            'up{job=="{{ job }}"}',
            "gates.targets_up[0].query",
            "query: up{",
            "unexpected '=' in label matching",
        ),
        (
            'no_firing_alerts: ALERTS{alertstate="firing", service="{{ service }}"}',
            'no_firing_alerts: ALERTS{alertstate="firing", service="{{ service }}"',
            "gates.no_firing_alerts",
            "no_firing_alerts:",
            "unexpected end of input inside braces",
        ),
        (
            'alerts_quiet: ALERTS{alertstate="firing", environment="{{ environment }}"}',
            'alerts_quiet: rate(ALERTS{alertstate="firing", environment="{{ environment }}"})',
            "stages[0].alerts_quiet",
            'environment="{{ environment }}"',
            "expected type matrix in call to function 'rate'",
        ),
        (
            'ALERTS{alertstate="firing", severity="critical", service="{{ service }}"}',
            'firing(ALERTS{severity="critical", service="{{ service }}"})',
            "stages[3].alerts_quiet",
            "firing(ALERTS",
            "unknown function with name 'firing'",
        ),
        # The query is fine; the variable's default it renders with is not.
        (
            """selector: 'env="prod"'""",
            """selector: 'env=prod'""",
            "stages[3].backlog.query",
            "query: max(queue_lag_seconds",
            "expected string",
        ),
    ],
)
def test_bad_promql_names_field_line_and_parser_message(
    old: str, new: str, path: str, line_needle: str, parser_says: str
) -> None:
    assert BASE.count(old) == 1
    text = BASE.replace(old, new)
    ((line, found_path, message),) = problems_of(text)
    assert found_path == path
    assert line == line_of(text, line_needle)
    assert message.startswith("not valid PromQL: ")
    assert parser_says in message
    assert "(rendered: " in message


def test_every_bad_query_is_reported_in_one_pass() -> None:
    text = BASE.replace("}[{{ window }}]))\n  - name: writes", "}[{{ window }}])\n  - name: writes")
    text = text.replace('up{job="{{ job }}"}', 'up{job="{{ job }}"')
    text = text.replace("'team=~", "'team~=")
    paths = [path for _, path, _ in problems_of(text)]
    assert paths == ["stop_criteria[0].total", "gates.targets_up[0].query", "alerts.matchers[1]"]


def test_the_shipped_plans_pass_every_check() -> None:
    for path in sorted(PLANS_DIR.glob("*.yaml")):
        plan = load_plan(path)
        assert plan_problems(plan) == [], path.name
        paths = {q.path for q in plan_queries(plan)}
        assert {"gates.no_firing_alerts", "gates.targets_up[0].query"} <= paths


# --- Alertmanager matchers --------------------------------------------------------


@pytest.mark.parametrize(
    ("matcher", "why"),
    [
        ('severity=="critical"', "'==' is not an operator: did you mean '='?"),
        ('severity = critical"', "ends with '\"' but does not start with one"),
        ('severity~="x"', "'~=' is not an operator: did you mean '=~'?"),
        ('="critical"', "no label name before '='"),
        ('!~"x"', "no label name before '!~'"),
        ('severity="critical', "unterminated quoted value"),
        ('severity="critical\\"', "unterminated quoted value"),
        ("severity", "expected an operator =, !=, =~ or !~ after 'severity', found nothing"),
        ('severity : "x"', "expected an operator"),
        ('1severity="x"', "'1severity' is not a label name"),
        ('"severity"="x"', "does not start with a label name"),
        ('team=~"(pay"', "'(pay' is not a valid regular expression"),
        ('severity="critical" team="pay"', "unexpected 'team=\"pay\"' after the quoted value"),
        ("severity=very critical", "cannot contain whitespace"),
        ("severity=critical,page", "cannot contain ','"),
        ("severity='critical'", "double quotes"),
        ("   ", "empty matcher"),
    ],
)
def test_matcher_typos_are_refused(matcher: str, why: str) -> None:
    with pytest.raises(MatcherError) as caught:
        parse_matcher(matcher)
    assert why in str(caught.value)


def test_a_matcher_typo_names_its_entry_and_line() -> None:
    text = BASE.replace(
        "matchers: ['severity=\"critical\"', 'team=~\"pay.*\"']",
        "matchers:\n    - 'severity=\"critical\"'\n    - 'severity==\"critical\"'",
    )
    ((line, path, message),) = problems_of(text)
    assert (line, path) == (line_of(text, "severity=="), "alerts.matchers[1]")
    assert message == "'severity==\"critical\"': '==' is not an operator: did you mean '='?"


@pytest.mark.parametrize(
    ("matcher", "labels", "holds"),
    [
        ('severity="critical"', {"severity": "critical"}, True),
        ('severity="critical"', {"severity": "warning"}, False),
        ('  severity = "critical"  ', {"severity": "critical"}, True),
        ("severity=critical", {"severity": "critical"}, True),
        ('severity!="info"', {"severity": "critical"}, True),
        ('severity!="info"', {"severity": "info"}, False),
        ('severity!="info"', {}, True),  # a missing label is ""
        ('team=~"pay.*"', {"team": "payments"}, True),
        ('team=~"pay.*"', {"team": "ops-payments"}, False),  # anchored at the start
        ('team=~"pay"', {"team": "payments"}, False),  # anchored at the end
        ('team=~"pay"', {"team": "pay\n"}, False),  # $ is the end, not a last newline
        ('severity=~"crit|page"', {"severity": "critical"}, False),  # ^(?:crit|page)$
        ('severity=~"crit|page"', {"severity": "page"}, True),
        ('env!~"stag.*"', {"env": "staging"}, False),
        ('env!~"stag.*"', {"env": "production"}, True),
        ('team=""', {}, True),
        ('team=""', {"team": "pay"}, False),
        ('team!~".+"', {}, True),
        ('msg="say \\"hi\\""', {"msg": 'say "hi"'}, True),
        ('path="a\\\\b"', {"path": "a\\b"}, True),
        ('text="l1\\nl2"', {"text": "l1\nl2"}, True),
        ('host=~"a\\.b"', {"host": "a.b"}, True),  # another escape stays: the regex a\.b
        ('host=~"a\\.b"', {"host": "axb"}, False),
    ],
)
def test_valid_matchers_match_as_alertmanager_does(
    matcher: str, labels: dict[str, str], holds: bool
) -> None:
    assert parse_matcher(matcher).matches(labels) is holds


def plan_with_matchers(*matchers: str) -> Plan:
    data = load_plan(PLANS_DIR / "demo.yaml").model_dump(mode="json")
    data["alerts"]["matchers"] = list(matchers)
    return Plan.from_data(data)


def test_the_webhook_matches_with_the_parsed_matchers() -> None:
    plan = plan_with_matchers('severity=~"critical|page"', 'team!="ops"', "env!~stag.*")
    assert matchers_hold(plan, {"severity": "page", "team": "pay", "env": "prod"}) == (True, "")
    assert matchers_hold(plan, {"severity": "critical-ish", "team": "pay"}) == (
        False,
        'matcher severity=~"critical|page" does not hold (severity="critical-ish")',
    )
    assert matchers_hold(plan, {"severity": "page", "team": "ops"})[0] is False
    assert matchers_hold(plan, {"severity": "page", "env": "staging"})[0] is False


def test_a_stored_matcher_that_does_not_parse_never_holds() -> None:
    # Plans stored before matchers were checked at load; no traceback in the webhook.
    ok, why = matchers_hold(plan_with_matchers('severity=="critical"'), {"severity": "critical"})
    assert not ok and "is not valid: '==' is not an operator" in why


# --- The command --------------------------------------------------------------------


def test_plan_validate_reports_a_promql_typo_with_field_and_line(tmp_path: Path) -> None:
    text = BASE.replace('code=~"5.."}[{{ window }}]))', 'code=~"5.."}[{{ window }}])')
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["plan", "validate", str(path)])
    assert result.exit_code == 2
    line = line_of(text, "errors: sum(")
    assert (
        f"{path}:{line}: stop_criteria[0].errors: not valid PromQL: unclosed left parenthesis"
        in result.stderr
    )
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_promql_nesting_counts_brackets_outside_strings() -> None:
    assert promql_nesting('sum(rate(x{path="((("}[5m]))') == 3
    assert promql_nesting('x{a="\\"("}') == 1  # an escaped quote does not end the string
    assert promql_nesting("1") == 0


def test_promql_nesting_reads_comments_and_strings_as_the_lexer_does() -> None:
    """A ``#`` outside a string comments to the end of the line; inside one it is
    text. The guard once took the quote in ``# "`` for a string that never closed,
    and counted none of the brackets after it: the parser got 1,990 of them."""
    assert promql_nesting('# "\n((1))') == 2  # a quote in a comment opens nothing
    assert promql_nesting("# '\r((1))") == 2  # a comment ends at \r too
    assert promql_nesting("x # (((\n+ 1") == 0  # brackets in a comment are not code
    assert promql_nesting('x{a="#"} + ((1))') == 2  # a # in a string comments nothing
    assert promql_nesting('x{a="\\"#("} + ((1))') == 2  # nor after an escaped quote
    assert promql_nesting("x{a=`\\`} + ((1))") == 2  # no escapes in backquotes
    assert promql_nesting("x{a='\\'#'} + ((1))") == 2


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("-" * 3990 + "x", "3990 signs (+ or -) in a row; at most 2 are accepted"),
        ("x - - -1", "3 signs (+ or -) in a row; at most 2 are accepted"),
        ("x" + " or x" * 101, "101 operators; at most 100 are accepted"),
        ('# "\n' + "(" * 101 + "1" + ")" * 101, "nested 101 deep; at most 100 levels"),
        (
            'x{a="' + "(" * 400 + '"}',  # and the brace
            "401 opening brackets, counting those in strings and comments; at most 400",
        ),
    ],
    ids=["sign-run", "three-signs", "operators", "comment-quote", "brackets-in-a-string"],
)
def test_a_query_shape_the_parser_cannot_afford_is_refused(query: str, why: str) -> None:
    assert (promql_error(query) or "").startswith(why)


@pytest.mark.parametrize(
    "query",
    [
        "x - -1",
        "1e-3 * rate(x[5m]) - 2.5E+2",
        "x" + " or x" * 100,
        'sum by (le) (rate(x{a="-", b=~"a|-|b"}[5m])) > bool 0.5 unless on(a) y',
        'x # a comment with ( and " in it\n + y',
    ],
)
def test_real_query_shapes_pass_the_guard(query: str) -> None:
    assert promql_error(query) is None


def test_too_deep_or_too_long_promql_is_refused_before_the_parser() -> None:
    nested = "(" * (MAX_PROMQL_NESTING + 1) + "1" + ")" * (MAX_PROMQL_NESTING + 1)
    assert (
        promql_error(nested) == f"nested 101 deep; at most {MAX_PROMQL_NESTING} levels are accepted"
    )
    assert promql_error("(" * MAX_PROMQL_NESTING + "1" + ")" * MAX_PROMQL_NESTING) is None
    long = "1" + "+1" * MAX_PROMQL_CHARS
    assert "characters long" in (promql_error(long) or "")
