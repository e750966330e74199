"""What analysis needs of a metrics provider: an instant vector and a range.

``PrometheusProvider`` is the real one; the batched answers wrap one; unit tests
of pure logic pass their own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from controller.metrics.prometheus import Sample, Series


class MetricsProvider(Protocol):
    def instant(self, query: str, at: datetime | None = None) -> list[Sample]: ...

    def range(
        self, query: str, start: datetime, end: datetime, step_seconds: float
    ) -> list[Series]: ...
