"""Registered plans: validated before they are stored, versioned, with who and when;
found by name before the plans directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import PLANS_DIR
from controller import plan_registry
from controller.operations import OperationError
from controller.plan import Plan
from controller.plan_loader import PlanError
from controller.plan_registry import find_plan, list_plans, register_plan

DEMO = (PLANS_DIR / "demo.yaml").read_text()


def test_versions_are_kept_with_who_registered_them(world, tmp_path: Path) -> None:
    runtime, clock = world[0], world[3]
    with runtime.sessions() as session:
        first, new = register_plan(session, "checkout", DEMO, registered_by="ada", now=clock())
        assert (first.version, new) == (1, True)
        same, new = register_plan(session, "checkout", DEMO, registered_by="bo", now=clock())
        assert (same.version, same.registered_by, new) == (1, "ada", False)
        changed = DEMO.replace("weight: 10", "weight: 5", 1)
        second, new = register_plan(
            session, "checkout", changed, registered_by="bo", now=clock(), note="smaller canary"
        )
        assert (second.version, new) == (2, True)
        assert [(p["name"], p["version"], p["note"]) for p in list_plans(session)] == [
            ("checkout", 2, "smaller canary")
        ]
        assert find_plan(session, "checkout", tmp_path).origin == "registered plan checkout v2"
        older = find_plan(session, "checkout", tmp_path, version=1)
        assert older.plan.steps()[1].weight == 10
        with pytest.raises(OperationError, match="no version 3 of registered plan 'checkout'"):
            find_plan(session, "checkout", tmp_path, version=3)


def test_an_invalid_plan_or_name_registers_nothing(world, tmp_path: Path) -> None:
    runtime, clock = world[0], world[3]
    with runtime.sessions() as session:
        with pytest.raises(PlanError):
            register_plan(
                session,
                "bad",
                DEMO.replace("weight: 10", "weight: true", 1),
                registered_by="a",
                now=clock(),
            )
        with pytest.raises(OperationError, match="'../x' is not a plan name"):
            register_plan(session, "../x", DEMO, registered_by="a", now=clock())
        assert list_plans(session) == []


def test_the_plans_directory_is_the_fallback(world, tmp_path: Path) -> None:
    runtime = world[0]
    (tmp_path / "local.yaml").write_text(DEMO)
    with runtime.sessions() as session:
        assert find_plan(session, "local", tmp_path).origin == "plans directory: local.yaml"
        with pytest.raises(OperationError, match="no plan named 'nope'"):
            find_plan(session, "nope", tmp_path)


def test_a_registered_plan_is_validated_once_not_at_every_start(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validating a plan parses every PromQL query in it, the largest part of a start:
    a registered version's text never changes, so registering validates it and the
    starts that find it do not again (they did, once per start)."""
    runtime, clock = world[0], world[3]
    parsed: list[str] = []
    real = plan_registry.parse_plan

    def counted(text: str, source: str = "<plan>") -> Plan:
        parsed.append(source)
        return real(text, source=source)

    monkeypatch.setattr(plan_registry, "parse_plan", counted)
    # A text of its own, so that no other test validated it in this process.
    text = DEMO + f"# {tmp_path.name}\n"
    with runtime.sessions() as session:
        register_plan(session, "once", text, registered_by="ada", now=clock())
        found = [find_plan(session, "once", tmp_path).plan for _ in range(3)]
    assert parsed == ["plan once"]
    assert found[0] is found[1] is found[2]
    (tmp_path / "local.yaml").write_text(text + "# in the plans directory\n")
    with runtime.sessions() as session:
        for _ in range(2):
            find_plan(session, "local", tmp_path)
    assert parsed == ["plan once", str(tmp_path / "local.yaml")]


def test_a_plan_that_does_not_validate_is_refused_at_every_start(world, tmp_path: Path) -> None:
    """Only what validated is kept: a plans-directory file with a problem is refused
    each time it is asked for, naming it."""
    runtime = world[0]
    (tmp_path / "broken.yaml").write_text(DEMO.replace("weight: 10", "weight: true", 1))
    with runtime.sessions() as session:
        for _ in range(2):
            with pytest.raises(PlanError, match=r"broken.yaml:\d+: stages\[1\].weight"):
                find_plan(session, "broken", tmp_path)
