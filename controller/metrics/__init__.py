"""Metrics providers: where canary analysis gets its numbers."""

from controller.metrics.prometheus import (
    MetricsError,
    PrometheusProvider,
    RetryPolicy,
    Sample,
    Series,
)

__all__ = ["MetricsError", "PrometheusProvider", "RetryPolicy", "Sample", "Series"]
