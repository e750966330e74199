"""Plan files: the shipped plans load, and every kind of mistake is reported with
its field path and its line."""

from pathlib import Path
from textwrap import dedent

import pytest

from config import PLANS_DIR
from controller.plan import render_template
from controller.plan_loader import PlanError, load_plan, parse_plan

PLANS = PLANS_DIR

CRITERION = """
stop_criteria:
  - name: writes
    judge: zero_tolerance
    failures: sum(increase(failed_writes_total{service="{{ service }}"}[{{ window }}]))
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PlanError) as caught:
        parse_plan(dedent(text), source="p.yaml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def test_standard_plan_is_the_seed_plan() -> None:
    plan = load_plan(PLANS / "standard.yaml")
    steps = plan.steps()
    assert [s.label for s in steps] == [
        "staging-soak",
        "canary 10%",
        "ramp 25%",
        "ramp 50%",
        "ramp 100%",
        "verify",
    ]
    assert [s.weight for s in steps] == [0, 10, 25, 50, 100, 100]
    assert steps[0].environment == "staging"
    assert steps[1].hold.total_seconds() == 30 * 60
    assert all(15 * 60 <= s.hold.total_seconds() <= 30 * 60 for s in steps[2:5])
    names = {c.name: c for c in plan.stop_criteria}
    assert set(names) == {
        "http_5xx_vs_baseline",
        "auth_failures",
        "queue_lag_rising",
        "latency_p95_vs_baseline",
        "latency_p99_vs_baseline",
        "failed_writes",
    }
    assert names["http_5xx_vs_baseline"].factor == 2
    assert names["http_5xx_vs_baseline"].sustained_for.total_seconds() == 5 * 60
    assert names["auth_failures"].max_ratio == 0.02
    assert names["failed_writes"].max == 0
    assert plan.analysis.on_limit == "pause"


def test_demo_plan_has_the_same_shape_in_seconds() -> None:
    demo, standard = load_plan(PLANS / "demo.yaml"), load_plan(PLANS / "standard.yaml")
    assert [s.label for s in demo.steps()] == [s.label for s in standard.steps()]
    assert [c.name for c in demo.stop_criteria] == [c.name for c in standard.stop_criteria]
    assert sum(s.hold.total_seconds() for s in demo.steps()) < 60


def test_minimal_plan_gets_sane_defaults() -> None:
    plan = parse_plan(
        dedent("""
        name: minimal
        stages:
          - {name: canary, kind: canary, weight: 5, hold: 30m}
          - {name: ramp, kind: ramp, steps: [{weight: 100, hold: 15m}]}
    """)
        + CRITERION
    )
    assert plan.analysis.interval.total_seconds() == 60
    assert plan.analysis.on_limit == "pause"
    assert plan.traffic.backend == "{{ service }}"


def test_each_field_error_names_path_and_line() -> None:
    found = problems("""
        name: Bad Name
        analysis:
          interval: 30
          on_limit: promote
        stages:
          - name: canary
            kind: canary
            weight: 10
            hold: 5x
          - name: foo
            kind: explode
        stop_criteria:
          - name: a
            judge: ratio_threshold
            max_ratio: 2
            errors: 'sum(x{v="{{ versoin }}"})'
            total: y
            bogus: 1
    """)
    by_path = {path: (line, message) for line, path, message in found}
    assert by_path["name"][0] == 2
    assert by_path["analysis.interval"] == (4, by_path["analysis.interval"][1])
    assert "like '30m'" in by_path["analysis.interval"][1]
    assert by_path["analysis.on_limit"][0] == 5
    assert by_path["stages[0].hold"][0] == 10 and "not a duration" in by_path["stages[0].hold"][1]
    assert "explode" in by_path["stages[1]"][1]
    assert by_path["stop_criteria[0].max_ratio"][0] == 16
    assert "versoin" in by_path["stop_criteria[0].errors"][1]
    assert by_path["stop_criteria[0].bogus"] == (19, "unknown field")


@pytest.mark.parametrize(
    ("stages", "path", "message"),
    [
        (
            "[{name: c, kind: canary, weight: 10, hold: 1m},"
            " {name: r, kind: ramp, steps: [{weight: 5, hold: 1m}, {weight: 100, hold: 1m}]}]",
            "stages[1].steps[0].weight",
            "weights must rise: 5 follows 10",
        ),
        (
            "[{name: c, kind: canary, weight: 10, hold: 1m},"
            " {name: r, kind: ramp, steps: [{weight: 50, hold: 1m}]}]",
            "stages",
            "weights must end at 100, the last one is 50",
        ),
        (
            "[{name: c, kind: canary, weight: 100, hold: 1m}, {name: s, kind: soak, duration: 1m}]",
            "stages[1]",
            "a soak stage must come before any traffic moves",
        ),
        (
            "[{name: v, kind: verify, duration: 1m},"
            " {name: c, kind: canary, weight: 100, hold: 1m}]",
            "stages[0]",
            "verify needs all traffic on the new version first",
        ),
        (
            "[{name: s, kind: soak, duration: 1m}]",
            "stages",
            "a plan needs a canary or ramp stage that moves traffic",
        ),
        (
            "[{name: c, kind: canary, weight: 50, hold: 1m}, {name: c, kind: canary, weight: 100,"
            " hold: 1m}]",
            "stages[1].name",
            "duplicate stage name 'c'",
        ),
    ],
)
def test_shape_rules(stages: str, path: str, message: str) -> None:
    found = problems(f"name: p\nstages: {stages}\n" + CRITERION)
    assert (path, message) in [(p, m) for _, p, m in found]


def test_criterion_must_name_a_real_stage() -> None:
    text = (
        "name: p\nstages: [{name: c, kind: canary, weight: 100, hold: 1m}]\n"
        + CRITERION
        + "    stages: [canry]\n"
    )
    found = problems(text)
    assert (8, "stop_criteria[0].stages", "no stage named 'canry'") in found
    assert (
        2,
        "stages[0]",
        "no stop criterion applies to this stage: it would promote on time alone",
    ) in found


def test_timeouts_must_fit_in_a_step() -> None:
    text = (
        "name: p\nstages: [{name: c, kind: canary, weight: 100, hold: 1m}]\n"
        + CRITERION
        + "gates:\n  commands: [{name: slow, command: [x], timeout: 15m}]\n"
    )
    ((line, path, message),) = problems(text)
    assert path == "gates.commands[0].timeout" and message.startswith("at most 30s")


def test_absurd_durations_are_refused() -> None:
    text = "name: p\nstages: [{name: c, kind: canary, weight: 100, hold: 99999999999d}]\n"
    assert "longer than 365 days" in problems(text + CRITERION)[0][2]


def test_windows_and_steps_that_could_never_be_measured_are_refused() -> None:
    text = dedent("""\
        name: p
        stages: [{name: c, kind: canary, weight: 100, hold: 1m}]
        stop_criteria:
          - name: lag
            judge: rising_trend
            series: max(lag)
            window: 0s
            step: 0s
          - name: lag2
            judge: rising_trend
            series: max(lag)
            window: 5m
            step: 1m
            min_points: 20
        """)
    found = {(path, message) for _, path, message in problems(text)}
    assert ("stop_criteria[0].window", "must be at least 1s") in found
    assert ("stop_criteria[0].step", "must be at least 1s") in found
    (only,) = problems(text.replace("window: 0s", "window: 1m").replace("step: 0s", "step: 5s"))
    assert only[:2] == (14, "stop_criteria[1].min_points")
    assert "has only 6 points, fewer than min_points 20" in only[2]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("canary_server", "'canary weight 0; disable server checkout/stable'"),
        ("stable_server", "'st able'"),
        ("backend", "'{{ service }};show info'"),
    ],
)
def test_haproxy_names_cannot_carry_a_second_command(field: str, value: str) -> None:
    text = (
        "name: p\nstages: [{name: c, kind: canary, weight: 100, hold: 1m}]\n"
        + CRITERION
        + f"traffic:\n  {field}: {value}\n"
    )
    ((line, path, _message),) = problems(text)
    assert (line, path) == (9, f"traffic.{field}")


def test_two_canary_stages_are_refused() -> None:
    stages = (
        "[{name: a, kind: canary, weight: 10, hold: 1m}, {name: b, kind: canary, weight: 100,"
        " hold: 1m}]"
    )
    found = problems(f"name: p\nstages: {stages}\n" + CRITERION)
    assert ("stages[1]", "only one canary stage, and it must come before the ramp") in [
        (p, m) for _, p, m in found
    ]


def test_yaml_syntax_error_has_a_line() -> None:
    assert problems("name: x\nstages: [\n")[0][0] == 3


def test_not_a_mapping() -> None:
    assert problems("- a\n- b\n")[0][2].startswith("a plan must be a YAML mapping")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read plan file"):
        load_plan(tmp_path / "missing.yaml")


def test_templates_render_with_known_variables() -> None:
    query = 'x{service="{{ service }}", v="{{canary_version}}"}[{{ window }}]'
    assert render_template(query, {"service": "api", "canary_version": "2", "window": "5m"}) == (
        'x{service="api", v="2"}[5m]'
    )


def test_demo_plan_has_the_standard_plans_gates_soak_approvals_and_verification() -> None:
    """The integration tests run the demo plan; it must exercise what the standard has."""
    demo, standard = load_plan(PLANS / "demo.yaml"), load_plan(PLANS / "standard.yaml")

    def shape(plan):  # noqa: ANN001, ANN202
        soak, *_, verify = plan.stages
        return {
            "owners": sorted(plan.owners),
            "gate approvals": [g.role for g in plan.gates.approvals],
            "gates": (
                len(plan.gates.targets_up),
                [h.name for h in plan.gates.http],
                bool(plan.gates.no_firing_alerts),
                # ci-green calls the team's own CI status script, which the lab lacks.
                [c.name for c in plan.gates.commands if c.name != "ci-green"],
            ),
            "stage approvals": {s.name: s.approval for s in plan.stages},
            "soak": (
                soak.load is not None,
                [c.name for c in soak.healthchecks],
                bool(soak.alerts_quiet),
                [c.name for c in soak.smoke.http],
                [c.name for c in soak.smoke.commands],
            ),
            "verify": (
                [c.name for c in verify.smoke.http],
                bool(verify.alerts_quiet),
                verify.backlog is not None,
            ),
        }

    assert shape(demo) == shape(standard)
    assert standard.gates.approvals and standard.owners["release_manager"]
    assert "ci-green" in [c.name for c in standard.gates.commands]
    assert all(c.command[0] != "sh" for c in standard.gates.commands + demo.gates.commands)
