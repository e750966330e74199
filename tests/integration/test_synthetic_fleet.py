"""The scale benchmark's synthetic fleet, as the benchmark runs it: its instances
behind a real HAProxy splitting traffic by weight, its load process sending user
requests through the frontend, and a real Prometheus scraping its one exporter."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.lab import ProcessGroup, start_prometheus
from controller.lab.demo import PROJECT_ROOT, child_env
from controller.lab.haproxy import start_haproxy_backends
from controller.lab.process import ManagedProcess
from controller.metrics.prometheus import PrometheusProvider


def _fleet(tmp_path: Path, group: ProcessGroup, mode: str, *args: str) -> ManagedProcess:
    return group.add(
        ManagedProcess(
            f"synthetic-{mode}",
            [sys.executable, "-m", "controller.lab.synthetic_fleet", mode, *args],
            tmp_path,
            env=child_env(),
            cwd=PROJECT_ROOT,
        )
    )


def test_the_synthetic_fleet_serves_versions_counts_traffic_and_exports_it(
    tmp_path: Path,
) -> None:
    spec, ports_file = tmp_path / "fleet.json", tmp_path / "ports.json"
    spec.write_text(
        json.dumps(
            {
                "instances": [
                    {"service": "svc-a", "version": "1.0.0"},
                    {"service": "svc-a", "version": "2.0.0"},
                ]
            }
        )
    )
    with ProcessGroup() as group:
        fleet = _fleet(tmp_path, group, "serve", "--spec", str(spec), "--ports", str(ports_file))
        fleet.wait_ready(ports_file.exists, timeout=30)
        ports = json.loads(ports_file.read_text())
        stable, canary = (f"127.0.0.1:{port}" for port in ports["instances"])
        exporter = f"127.0.0.1:{ports['exporter']}"
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(f"http://{canary}/version").json()["version"] == "2.0.0"
            assert client.get(f"http://{stable}/healthz").text == "ok"

        haproxy = group.add(
            start_haproxy_backends(
                tmp_path, [("svc-a", {"blue": stable, "green": canary}, {"blue": 90, "green": 10})]
            )
        )
        targets = tmp_path / "targets.json"
        targets.write_text(json.dumps([haproxy.frontends["svc-a"].removeprefix("http://")]))
        load = _fleet(tmp_path, group, "load", "--targets", str(targets), "--rate", "50")
        load.wait_ready(lambda: "synthetic load running" in load.log_tail(), timeout=30)
        prometheus = group.add(start_prometheus(tmp_path, [exporter], scrape_interval="1s"))

        provider = PrometheusProvider(prometheus.url)
        query = 'sum by (version) (demo_http_requests_total{service="svc-a"})'
        deadline = time.monotonic() + 30
        counts: dict[str, float] = {}
        while time.monotonic() < deadline:
            counts = {s.labels["version"]: s.value for s in provider.instant(query)}
            if counts.get("2.0.0", 0) >= 10:
                break
            time.sleep(0.5)
        # HAProxy's 90/10 split, seen through Prometheus: the canary takes some,
        # the stable slot most.
        assert counts.get("2.0.0", 0) >= 10, counts
        assert counts["1.0.0"] > 4 * counts["2.0.0"], counts

        text = httpx.get(f"http://{exporter}/metrics", trust_env=False, timeout=5).text
        samples = {
            (sample.name, sample.labels.get("version"), sample.labels.get("le")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        for version in ("1.0.0", "2.0.0"):
            requests = samples[("demo_http_requests_total", version, None)]
            assert samples[("demo_request_duration_seconds_count", version, None)] == requests
            assert samples[("demo_request_duration_seconds_bucket", version, "+Inf")] == requests
            assert 0 <= samples[("demo_queue_lag_seconds", version, None)] < 1
        # Error series appear only with the first error, as in most services.
        assert not any(name == "demo_write_failures_total" for name, _, _ in samples)
