"""A synthetic fleet for the scale benchmark: thousands of service instances in one
asyncio process, their metrics on one exporter, their user traffic from another.

The chaos lab's fleet (``controller.demo.fleet``) runs every instance as a real demo
service, a thread and a metrics registry each; at a few hundred services that one
process, its health checks and its traffic take a whole core and answer the
controller late, so a scale run measures the lab. This one keeps what the
controller reads and does, and nothing else:

- each instance listens on a port of its own (HAProxy routes to it by weight) and
  answers ``/version`` (the slots' version check), ``/healthz`` (HAProxy's check)
  and any other path as a healthy user request, counted;
- one exporter port serves every instance's series with the demo service's names
  and labels (``demo_http_requests_total``, ``demo_auth_attempts_total``,
  ``demo_writes_total``, ``demo_request_duration_seconds``,
  ``demo_queue_lag_seconds``), error series created lazily as most services do:
  Prometheus scrapes one target instead of two per service;
- ``load`` mode sends each service's user traffic through its HAProxy frontend at
  a steady rate, over kept-alive connections.

Run: ``python -m controller.lab.synthetic_fleet serve --spec fleet.json --ports
ports.json`` (writes ``{"instances": [port, ...], "exporter": port}``) and
``python -m controller.lab.synthetic_fleet load --targets targets.json --rate 1``
(``targets.json``: a list of ``host:port``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
# The demo service's histogram buckets (controller.demo.service.DemoMetrics).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HEALTHY_LAG_SECONDS, HEALTHY_LAG_JITTER = 0.5, 0.2
_MAX_HEADER_BYTES = 16384
# Every user request is answered at once; recorded as this long, the same for both
# slots, so the latency criteria see a healthy canary.
ANSWER_SECONDS = 0.002


@dataclass
class Instance:
    """One slot of one service: what it serves and what it has counted."""

    service: str
    version: str
    environment: str = "production"
    requests: int = 0
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))

    def user_request(self, seconds: float) -> bytes:
        self.requests += 1
        self.duration_sum += seconds
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1
        return json.dumps(
            {"service": self.service, "version": self.version, "status": "ok", "write": "ok"}
        ).encode()

    def version_answer(self) -> bytes:
        return json.dumps(
            {"service": self.service, "version": self.version, "environment": self.environment}
        ).encode()

    def exposition(self, rng: random.Random) -> list[str]:
        labels = (
            f'service="{self.service}",version="{self.version}",environment="{self.environment}"'
        )
        lag = max(0.0, HEALTHY_LAG_SECONDS + rng.uniform(-HEALTHY_LAG_JITTER, HEALTHY_LAG_JITTER))
        lines = [
            f'demo_http_requests_total{{{labels},code="200"}} {self.requests}',
            f'demo_auth_attempts_total{{{labels},result="success"}} {self.requests}',
            f"demo_writes_total{{{labels}}} {self.requests}",
            f"demo_queue_lag_seconds{{{labels}}} {lag:.3f}",
        ]
        for bound, count in zip(BUCKETS, self.buckets, strict=True):
            lines.append(f'demo_request_duration_seconds_bucket{{{labels},le="{bound}"}} {count}')
        lines += [
            f'demo_request_duration_seconds_bucket{{{labels},le="+Inf"}} {self.requests}',
            f"demo_request_duration_seconds_count{{{labels}}} {self.requests}",
            f"demo_request_duration_seconds_sum{{{labels}}} {self.duration_sum:.6f}",
        ]
        return lines


_TYPES = [
    "# TYPE demo_http_requests_total counter",
    "# TYPE demo_auth_attempts_total counter",
    "# TYPE demo_writes_total counter",
    "# TYPE demo_queue_lag_seconds gauge",
    "# TYPE demo_request_duration_seconds histogram",
]


def exposition(instances: Sequence[Instance], rng: random.Random) -> bytes:
    """Every instance's series in the Prometheus text format, grouped by family."""
    per_instance = [instance.exposition(rng) for instance in instances]
    families: dict[str, list[str]] = {}
    for lines in per_instance:
        for line in lines:
            name = line.split("{", 1)[0]
            for suffix in ("_bucket", "_count", "_sum"):
                if name.startswith("demo_request_duration_seconds") and name.endswith(suffix):
                    name = "demo_request_duration_seconds"
            families.setdefault(name, []).append(line)
    out = []
    for header in _TYPES:
        out.append(header)
        out += families.get(header.split()[2], [])
    return ("\n".join(out) + "\n").encode()


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found"}.get(status, "OK")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer
) -> None:
    """HTTP/1.1 with keep-alive: read a request head (and any body), answer, repeat."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER_BYTES:
                break
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else "/"
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length:
                await reader.readexactly(length)
            writer.write(answer(path))
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def instance_answer(instance: Instance):
    def answer(path: str) -> bytes:
        if path == "/healthz":
            return _response(200, b"ok", "text/plain")
        if path == "/version":
            return _response(200, instance.version_answer(), "application/json")
        return _response(200, instance.user_request(ANSWER_SECONDS), "application/json")

    return answer


def exporter_answer(instances: Sequence[Instance]):
    rng = random.Random(7)

    def answer(path: str) -> bytes:
        if path != "/metrics":
            return _response(404, b"not found", "text/plain")
        return _response(200, exposition(instances, rng), "text/plain; version=0.0.4")

    return answer


async def serve(spec: dict, ports_file: Path) -> None:
    instances = [
        Instance(
            str(item["service"]), str(item["version"]), str(item.get("environment", "production"))
        )
        for item in spec["instances"]
    ]
    servers = []
    for instance in instances:
        answer = instance_answer(instance)
        servers.append(
            await asyncio.start_server(
                lambda r, w, answer=answer: _serve_connection(r, w, answer), HOST, 0, backlog=256
            )
        )
    metrics = exporter_answer(instances)
    exporter = await asyncio.start_server(lambda r, w: _serve_connection(r, w, metrics), HOST, 0)
    ports = {
        "instances": [server.sockets[0].getsockname()[1] for server in servers],
        "exporter": exporter.sockets[0].getsockname()[1],
    }
    partial = ports_file.with_suffix(".partial")
    partial.write_text(json.dumps(ports))
    partial.replace(ports_file)
    print(f"synthetic fleet ready: {len(instances)} instances", flush=True)
    await _until_stopped()


async def load(targets: list[str], rate: float) -> None:
    """Each target gets ``rate`` GET /checkout a second over one kept-alive
    connection, reconnecting after any failure; starts spread over one period."""
    tasks = [
        asyncio.create_task(_load_one(target, rate, offset=index / max(1, len(targets)) / rate))
        for index, target in enumerate(targets)
    ]
    print(f"synthetic load running: {len(targets)} targets at {rate:g}/s", flush=True)
    await _until_stopped()
    for task in tasks:
        task.cancel()


async def _load_one(target: str, rate: float, offset: float) -> None:
    host, _, port = target.rpartition(":")
    request = f"GET /checkout HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    await asyncio.sleep(offset)
    next_at = time.monotonic()
    connection = None
    while True:
        next_at = max(next_at + 1 / rate, time.monotonic() - 1.0)
        try:
            if connection is None:
                connection = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
            reader, writer = connection
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = 0
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            if length:
                await asyncio.wait_for(reader.readexactly(length), 5)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            if connection is not None:
                connection[1].close()
            connection = None
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def _raise_open_files_limit() -> None:
    """Two listening sockets per service and their connections: thousands of files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.lab.synthetic_fleet", description=__doc__.split("\n\n")[0]
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    serving = modes.add_parser("serve", help="serve the instances and the exporter")
    serving.add_argument("--spec", type=Path, required=True, help="JSON file of instances")
    serving.add_argument("--ports", type=Path, required=True, help="where to write the ports")
    loading = modes.add_parser("load", help="send user traffic to HAProxy frontends")
    loading.add_argument("--targets", type=Path, required=True, help="JSON list of host:port")
    loading.add_argument("--rate", type=float, default=1.0, help="requests a second per target")
    args = parser.parse_args(argv)
    _raise_open_files_limit()
    if args.mode == "serve":
        asyncio.run(serve(json.loads(args.spec.read_text()), args.ports))
    else:
        if not args.rate > 0:
            parser.error(f"--rate must be > 0, got {args.rate}")
        asyncio.run(load(json.loads(args.targets.read_text()), args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
