"""Rich renderings of store views for the terminal: status, the live watch, history,
incidents. They only format what ``controller.views`` derived from the store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from controller.durations import format_duration

_STEP_MARK = {"done": "✓", "current": "▶", "pending": " "}


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def rollout_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("id", "service", "version", "stable", "state", "stage", "weight", "tripped")
    for r in rows:
        table.add_row(
            r["id"],
            r["service"],
            r["version"],
            r["stable"],
            r["state"],
            r["stage"],
            "-" if r["weight"] is None else f"{r['weight']}%",
            r["tripped"] or "",
        )
    return table


def detail_view(d: dict[str, Any]) -> RenderableType:
    """One rollout: header, steps with where it stands, criteria against limits, events."""
    weight = "-" if d["weight"] is None else f"{d['weight']}%"
    parts: list[RenderableType] = [
        Text.assemble(
            (d["id"], "bold"),
            f" {d['service']} {d['version']} (stable {d['stable']}) plan {d['plan']}: ",
            (d["state"], "bold"),
            f" at {d['stage']} (step {d['step']}), canary weight {weight}",
        )
    ]
    if d.get("stalled"):
        # Why nothing moves (no reconcile for a while), above everything it explains.
        parts.append(Text(f"warning: {d['stalled']}", style="bold"))
    if d.get("hold_left_seconds") is not None:
        left = format_duration(timedelta(seconds=round(d["hold_left_seconds"])))
        parts.append(Text(f"hold left: {left}"))
    if d["reason"]:
        parts.append(Text(f"reason: {d['reason']}"))
    if d.get("action_needed"):
        parts.append(Text(f"action needed: {d['action_needed']}", style="bold red"))
    steps = Table("", "step", "weight", "hold", box=None)
    for s in d["steps"]:
        steps.add_row(_STEP_MARK[s["status"]], s["label"], f"{s['weight']}%", s["hold"])
    parts.append(steps)
    parts.append(Text("weights so far: " + " -> ".join(f"{w}%" for w in d["weights"])))
    if d["criteria"]:
        criteria = Table("criterion", "verdict", "value", "limit", "reason")
        for name, m in d["criteria"].items():
            criteria.add_row(
                name, m["verdict"], number(m["value"]), number(m["limit"]), m["reason"]
            )
        parts.append(criteria)
    if d.get("gates"):
        gates = Table("gate", "kind", "result", "detail")
        for g in d["gates"]:
            gates.add_row(g["name"], g["kind"], "pass" if g["ok"] else "FAIL", g["detail"])
        parts.append(gates)
    if d.get("approvals"):
        parts.append(
            Text(
                "approvals: "
                + "; ".join(
                    f"{a['gate']}: {a['name']} as {a['role']} at {a['at'][11:19]}"
                    for a in d["approvals"]
                )
            )
        )
    if d["events"]:
        parts.append(history_table(d["events"]))
    return Group(*parts)


def history_table(events: list[dict[str, Any]]) -> Table:
    table = Table("at", "kind", "actor", "message")
    for e in events:
        table.add_row(e["at"][:19].replace("T", " "), e["kind"], e["actor"], e["message"])
    return table


# What started the rollback, as a sentence's head per trigger kind; the rest of the
# trigger's fields follow it as "name: value".
_TRIGGER_HEADS = {
    "criterion": ("criterion", "criterion {} tripped"),
    "alert": ("alertname", "alert {} fired"),
    "policy": ("policy", "plan policy {}"),
    "manual": (None, "by hand"),
    "smoke": (None, "smoke checks failed"),
    "soak": (None, "staging soak failed"),
}


def trigger_text(trigger: Mapping[str, Any]) -> str:
    """An incident's trigger in words, not a Python dict: what started the rollback
    first (``alert CanaryHigh5xxRate fired``), then each field that has a value
    (``labels: service=checkout, version=1.4.0``), in the order the store keeps."""
    rest = {k: v for k, v in trigger.items() if k != "kind" and v not in (None, "", {}, [])}
    kind = str(trigger.get("kind") or "unknown")
    field, head = _TRIGGER_HEADS.get(kind, (None, f"{kind}"))
    parts = [head.format(rest.pop(field, "?")) if field else head]
    parts += [f"{name.replace('_', ' ')}: {_field_text(value)}" for name, value in rest.items()]
    return "; ".join(parts)


def _field_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_field_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_field_text(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return number(value)


def incident_view(document: dict[str, Any]) -> RenderableType:
    snapshot = Table("criterion", "verdict", "value", "limit", "reason")
    for m in document["metrics_snapshot"]:
        snapshot.add_row(
            m["criterion"], m["verdict"], number(m["value"]), number(m["limit"]), m["reason"]
        )
    return Group(
        Text.assemble((document["id"], "bold"), f" {document['severity']}: {document['title']}"),
        Text(
            f"rollout {document['rollout_id']} started by {document['started_by']}, "
            f"opened {document['opened_at']}; webhook: {document['webhook_status']}"
        ),
        Text(f"trigger: {trigger_text(document['trigger'])}"),
        snapshot,
        history_table(document["timeline"]),
    )
