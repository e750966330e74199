"""Write docs/plans/fields.md, every field of a plan file, from the plans' JSON Schema.

The schema is what ``canary plan schema`` prints and what the loader enforces, so
this page cannot say a field exists that the loader refuses, or miss one it takes.
tests/unit/test_docs_site.py fails when the committed page differs from what this
script writes; after changing a plan model, run it again:

    .venv/bin/python scripts/plan_reference.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plans" / "fields.md"

HEADER = """\
# Every field

<!-- Written by scripts/plan_reference.py from the plans' JSON Schema
     (`canary plan schema`); edit the plan models, then run the script again. -->

Every field a plan file may hold, as the loader checks it: generated from the
JSON Schema that `canary plan schema` prints (give it to your editor, see
[Getting started §3](../getting-started.md#3-write-a-plan)). Unknown fields are
errors. A duration is a number with a unit (`500ms`, `90s`, `30m`, `1h30m`, `1d`).
What the fields mean together is on the other pages of the plan reference:
[Plan files](index.md), [Traffic](traffic.md), [Stop criteria](stop-criteria.md),
[Gates, approvals, soak and verification](gates.md) and
[the runbook](../on-call/runbook.md).
"""

DURATION_PATTERN_HINT = "ms|s|m|h|d"


def anchor(name: str) -> str:
    """The heading anchor mkdocs gives ``## Name``."""
    return name.lower()


def describe_type(schema: dict[str, Any]) -> str:
    """A short, linked type for one property's schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{anchor(name)})"
    if "anyOf" in schema:
        # An optional field is "X or null"; leaving it out is what null means.
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        return " or ".join(describe_type(option) for option in options)
    if "oneOf" in schema:
        return " or ".join(describe_type(option) for option in schema["oneOf"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        items = describe_type(schema.get("items", {}))
        return f"list of {items}"
    if kind == "object":
        if "patternProperties" in schema:
            (key_pattern, value_schema), *_ = schema["patternProperties"].items()
            return f"map of names (`{key_pattern}`) to {describe_type(value_schema)}"
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return f"map to {describe_type(extra)}"
        return "mapping"
    if kind == "string" and DURATION_PATTERN_HINT in schema.get("pattern", ""):
        return "duration"
    if kind in ("string", "integer", "number", "boolean", "null"):
        return str(kind)
    return "any"


def constraints(schema: dict[str, Any]) -> str:
    """Bounds and patterns worth knowing, in words."""
    words = []
    for key, text in (
        ("minimum", ">= {}"),
        ("exclusiveMinimum", "> {}"),
        ("maximum", "<= {}"),
        ("exclusiveMaximum", "< {}"),
        ("minLength", "at least {} characters"),
        ("maxLength", "at most {} characters"),
        ("minItems", "at least {} item(s)"),
    ):
        if key in schema:
            value = schema[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            words.append(text.format(value))
    pattern = schema.get("pattern")
    if pattern and DURATION_PATTERN_HINT not in pattern:
        words.append(f"matches `{pattern}`")
    return ", ".join(words)


def cell(text: str) -> str:
    """Text fit for one table cell: one line, pipes escaped, rST literals as code."""
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = " ".join(text.split())
    return text.replace("|", "\\|")


def default_text(schema: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in schema:
        return ""
    value = schema["default"]
    if value in ({}, [], None, ""):
        return {"{}": "none", "[]": "none", "null": "none", '""': "empty"}[json.dumps(value)]
    if isinstance(value, dict):
        return "see its fields"
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def section(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    if schema.get("description"):
        lines += [cell(schema["description"]), ""]
    if "enum" in schema:
        lines += ["One of " + ", ".join(f"`{value}`" for value in schema["enum"]) + ".", ""]
        return lines
    properties = schema.get("properties", {})
    if not properties:
        return lines
    required = set(schema.get("required", []))
    lines += ["| field | type | default | notes |", "|---|---|---|---|"]
    for field, field_schema in properties.items():
        description = field_schema.get("description", "")
        if description.startswith("A duration:"):
            description = ""  # said once at the top of the page
        notes = " ".join(part for part in (cell(description), constraints(field_schema)) if part)
        lines.append(
            f"| `{field}` | {describe_type(field_schema)} "
            f"| {default_text(field_schema, field in required)} | {notes} |"
        )
    lines.append("")
    return lines


def order(schema: dict[str, Any]) -> list[str]:
    """Definitions in the order a reader meets them from the top of a plan."""
    seen: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen.append(name)
                    visit(schema["$defs"][name])
            for key, value in node.items():
                if key != "$defs":
                    visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit({key: value for key, value in schema.items() if key != "$defs"})
    return seen + [name for name in schema.get("$defs", {}) if name not in seen]


def render(schema: dict[str, Any]) -> str:
    lines = [HEADER]
    top = dict(schema)
    top.pop("$defs", None)
    lines += section("Plan", top)
    for name in order(schema):
        lines += section(name, schema["$defs"][name])
    return "\n".join(lines).rstrip("\n") + "\n"


def current_schema() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from controller.plan import plan_json_schema

    return plan_json_schema()


def main() -> None:
    PAGE.write_text(render(current_schema()))
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
