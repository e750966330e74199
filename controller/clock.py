"""The wall clock, in UTC: a leaf that anything may import (views, telemetry, the CLI)
without pulling in the runtime that wires the workers."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
