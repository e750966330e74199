"""The four outcomes of a measurement, with the words Argo Rollouts users know.

*inconclusive* and *error* are outcomes of their own, never folded into pass:
an empty result, NaN or too little traffic says nothing about the canary, and
neither does a Prometheus that cannot answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


@dataclass(frozen=True)
class Judgement:
    """What a judge decided and why, in numbers a human can check."""

    verdict: Verdict
    reason: str
    value: float | None = None
    limit: float | None = None
    details: dict[str, float | None] = field(default_factory=dict)
