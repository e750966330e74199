"""Registered plans: validated before they are stored, versioned, with who and when;
found by name before the plans directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import PLANS_DIR
from controller.operations import OperationError
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
