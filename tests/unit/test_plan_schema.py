"""``canary plan schema``: the JSON Schema editors use, agreeing with the loader."""

from __future__ import annotations

import json

import jsonschema_rs
import yaml
from typer.testing import CliRunner

from config import PLANS_DIR
from controller.cli import app


def schema() -> dict:
    result = CliRunner().invoke(app, ["plan", "schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_shipped_plans_fit_the_schema() -> None:
    validator = jsonschema_rs.validator_for(schema())
    paths = sorted(PLANS_DIR.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"standard", "demo", "compose"}
    for path in paths:
        data = yaml.safe_load(path.read_text())
        errors = [str(e) for e in validator.iter_errors(data)]
        assert not errors, (path.name, errors[:3])


def test_the_schema_refuses_what_the_loader_refuses() -> None:
    validator = jsonschema_rs.validator_for(schema())
    data = yaml.safe_load((PLANS_DIR / "demo.yaml").read_text())
    data["analysis"]["interval"] = "PT1M"  # ISO 8601 is not how plans write durations
    assert not validator.is_valid(data)
    data = yaml.safe_load((PLANS_DIR / "demo.yaml").read_text())
    data["stages"][1]["kind"] = "canaryy"
    assert not validator.is_valid(data)
    data = yaml.safe_load((PLANS_DIR / "demo.yaml").read_text())
    data["surprise"] = 1
    assert not validator.is_valid(data)


def test_durations_are_described_as_plans_write_them() -> None:
    interval = schema()["$defs"]["AnalysisPolicy"]["properties"]["interval"]
    assert interval["default"] == "1m" and "30m" in interval["description"]
