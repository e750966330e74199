"""The compose deployment's monitoring is wired end to end: the API's /metrics takes a
token from the environment and Prometheus scrapes with the same token from a secret
file; Prometheus evaluates the shipped rules and sends to Alertmanager, which posts
to the API's webhook with its token from another secret file; every worker and demo
slot is scraped."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
ALERTMANAGER = yaml.safe_load((ROOT / "config/alertmanager/alertmanager.yml").read_text())


def mounts(service: str) -> dict[str, str]:
    """Container path -> repository path of a service's bind mounts."""
    pairs = (v.split(":")[:2] for v in SERVICES[service].get("volumes", []))
    return {target: source for source, target in pairs if source.startswith("./")}


def secret_path(service: str, name: str) -> str:
    (mounted,) = [s for s in SERVICES[service]["secrets"] if s == name]
    return f"/run/secrets/{mounted}"


def job(name: str) -> dict:
    return next(j for j in PROMETHEUS["scrape_configs"] if j["job_name"] == name)


def test_the_api_requires_a_metrics_token_from_the_environment() -> None:
    api_env = SERVICES["api"]["environment"]
    assert api_env["CANARY_METRICS_TOKEN"] == "${CANARY_METRICS_TOKEN:?set CANARY_METRICS_TOKEN}"


def test_prometheus_reads_the_metrics_token_from_a_secret_file() -> None:
    assert COMPOSE["secrets"]["metrics_token"] == {"file": "./secrets/metrics_token"}
    assert job("canary-api")["authorization"] == {
        "type": "Bearer",
        "credentials_file": secret_path("prometheus", "metrics_token"),
    }


def test_prometheus_loads_the_rule_files_it_is_given() -> None:
    config_dir = PurePosixPath("/etc/prometheus")
    prometheus_mounts = mounts("prometheus")
    assert prometheus_mounts[str(config_dir / "prometheus.yml")].endswith("prometheus.yml")
    for rule_file in PROMETHEUS["rule_files"]:
        mounted = str(config_dir / rule_file)  # relative to the config file
        assert mounted in prometheus_mounts, rule_file
        assert (ROOT / prometheus_mounts[mounted]).is_file()
    names = {Path(p).name for p in PROMETHEUS["rule_files"]}
    assert names == {"controller-alerts.yml", "service-alerts.yml"}


def test_prometheus_sends_alerts_to_alertmanager() -> None:
    (alertmanagers,) = PROMETHEUS["alerting"]["alertmanagers"]
    (static,) = alertmanagers["static_configs"]
    assert static["targets"] == ["alertmanager:9093"]
    assert "alertmanager" in SERVICES


def test_alertmanager_posts_to_the_webhook_with_the_token_from_a_secret_file() -> None:
    mounted = mounts("alertmanager")
    command = SERVICES["alertmanager"]["command"]
    config_path = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
    assert mounted[config_path] == "./config/alertmanager/alertmanager.yml"
    assert COMPOSE["secrets"]["alertmanager_token"] == {"file": "./secrets/alertmanager_token"}

    receivers = {r["name"]: r for r in ALERTMANAGER["receivers"]}
    (webhook,) = receivers[ALERTMANAGER["route"]["receiver"]]["webhook_configs"]
    api_port = SERVICES["api"]["command"][SERVICES["api"]["command"].index("--port") + 1]
    assert webhook["url"] == f"http://api:{api_port}/api/v1/alerts/alertmanager"
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": secret_path("alertmanager", "alertmanager_token"),
    }
    # The API checks the same value, from the variable the secrets script writes too.
    assert "CANARY_ALERTMANAGER_TOKEN" in SERVICES["api"]["environment"]


def test_every_worker_and_every_demo_slot_is_scraped() -> None:
    workers = {
        f"{name}:{spec['command'][spec['command'].index('--metrics-port') + 1]}"
        for name, spec in SERVICES.items()
        if spec.get("command", [None])[0] == "worker"
    }
    (static,) = job("canary-workers")["static_configs"]
    assert set(static["targets"]) == workers
    demo = {
        f"{name}:{spec['command'][spec['command'].index('--port') + 1]}"
        for name, spec in SERVICES.items()
        if spec.get("command", [None])[0] == "demo-service"
    }
    (static,) = job("demo")["static_configs"]
    assert set(static["targets"]) == demo
