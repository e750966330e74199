"""The compose deployment protects the API's /metrics with a token from the
environment, and its Prometheus scrapes with that token read from a file."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
PROMETHEUS = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())


def test_the_api_requires_a_metrics_token_from_the_environment() -> None:
    api_env = COMPOSE["services"]["api"]["environment"]
    assert api_env["CANARY_METRICS_TOKEN"] == "${CANARY_METRICS_TOKEN:?set CANARY_METRICS_TOKEN}"


def test_prometheus_reads_the_same_token_from_a_secret_file() -> None:
    assert COMPOSE["secrets"]["metrics_token"] == {"environment": "CANARY_METRICS_TOKEN"}
    (mounted,) = COMPOSE["services"]["prometheus"]["secrets"]
    assert mounted["source"] == "metrics_token"
    # Prometheus runs as nobody: the file must be readable by it.
    assert mounted["mode"] & 0o004
    api_job = next(job for job in PROMETHEUS["scrape_configs"] if job["job_name"] == "canary-api")
    assert api_job["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/run/secrets/{mounted['target']}",
    }
    assert "credentials" not in api_job["authorization"]
