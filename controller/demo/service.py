"""A stand-in for one version of a real service, with faults you can dial in.

The canary controller needs something to route real traffic to and judge with
real Prometheus data. Two copies of this service (stable and canary) behind
HAProxy are that something; the fault knobs make the canary misbehave in the
ways the analysis must catch: HTTP errors, failed logins, a queue that falls
behind, and writes that fail while HTTP still looks healthy.

Run: ``python -m controller.demo.service --port 8081 --service checkout
--version 1.1.0 --environment production [--error-rate 0.2 ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

DISABLE_PATH = "/admin/disable"
FAULTS_PATH = "/admin/faults"
VERSION_PATH = "/version"

# name -> (minimum, maximum or None for unbounded)
KNOB_RANGES: dict[str, tuple[float, float | None]] = {
    "error_rate": (0.0, 1.0),
    "auth_failure_rate": (0.0, 1.0),
    "queue_lag_growth": (0.0, None),
    "write_failure_rate": (0.0, 1.0),
    "latency_ms": (0.0, 10000.0),
}

# A healthy queue lag wobbles around this value so that it is never
# monotonically rising by accident: only a real fault makes it climb.
HEALTHY_LAG_SECONDS = 0.5
HEALTHY_LAG_JITTER = 0.2


class KnobError(ValueError):
    """A fault knob update was rejected; ``field`` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class FaultKnobs:
    """How badly this instance misbehaves. All zero means healthy.

    error_rate: share of user requests answered 500.
    auth_failure_rate: share of the *remaining* requests answered 401.
    queue_lag_growth: seconds of queue lag added per second.
    write_failure_rate: share of requests whose write silently fails.
    latency_ms: added to every user request's answer time.
    """

    error_rate: float = 0.0
    auth_failure_rate: float = 0.0
    queue_lag_growth: float = 0.0
    write_failure_rate: float = 0.0
    latency_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def parse_knobs(data: object) -> FaultKnobs:
    """Validate a knob document and return the complete new knob state.

    Updates are absolute (PUT semantics): keys that are left out go back to
    0, so sending the same document twice always yields the same state.

    Raises:
        KnobError: not an object, unknown key, non-number, or out of range.
    """
    if not isinstance(data, Mapping):
        raise KnobError("body", "must be a JSON object of knob names to numbers")
    values: dict[str, float] = {}
    for key, raw in data.items():
        if key not in KNOB_RANGES:
            raise KnobError(str(key), f"unknown knob; known knobs: {', '.join(KNOB_RANGES)}")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise KnobError(key, f"must be a number, got {raw!r}")
        value = float(raw)
        low, high = KNOB_RANGES[key]
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise KnobError(key, f"must be {allowed}, got {raw!r}")
        values[key] = value
    return replace(FaultKnobs(), **values)


@dataclass(frozen=True)
class Outcome:
    """What happened to one user request."""

    status: int
    auth_ok: bool
    write_ok: bool


def decide_outcome(knobs: FaultKnobs, rng: random.Random) -> Outcome:
    """Roll the dice for one user request: 500 first, then 401, else 200."""
    if rng.random() < knobs.error_rate:
        status = 500
    elif rng.random() < knobs.auth_failure_rate:
        status = 401
    else:
        status = 200
    write_ok = rng.random() >= knobs.write_failure_rate
    return Outcome(status=status, auth_ok=status != 401, write_ok=write_ok)


class QueueLag:
    """Queue lag that is noisy when healthy and climbs steadily under a growth fault."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._growth = 0.0
        self._since = time.monotonic()

    def set_growth(self, growth: float, now: float | None = None) -> None:
        """Change the growth; the clock restarts only if the value actually changes."""
        if growth != self._growth:
            self._growth = growth
            self._since = time.monotonic() if now is None else now

    def value(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        noise = self._rng.uniform(-HEALTHY_LAG_JITTER, HEALTHY_LAG_JITTER)
        return max(0.0, HEALTHY_LAG_SECONDS + noise) + self._growth * (now - self._since)


class DemoMetrics:
    """The service's Prometheus series, each labelled service/version/environment.

    Every series is created at zero on start-up so that rate() and ratios
    work from the first scrape instead of the series appearing mid-rollout.
    """

    STATUS_CODES = ("200", "401", "500")

    def __init__(
        self, service: str, version: str, environment: str, lag: QueueLag, lazy: bool = False
    ) -> None:
        """``lazy``: like most services using labelled prometheus_client counters, do
        not create the error series up front; they appear with the first error."""
        self.registry = CollectorRegistry()
        identity = ["service", "version", "environment"]
        self._identity = {"service": service, "version": version, "environment": environment}
        self.requests = Counter(
            "demo_http_requests_total",
            "User requests answered, by HTTP status code.",
            [*identity, "code"],
            registry=self.registry,
        )
        self.auth_attempts = Counter(
            "demo_auth_attempts_total",
            "Authentication attempts (every user request is one), by result.",
            [*identity, "result"],
            registry=self.registry,
        )
        self.writes = Counter(
            "demo_writes_total", "Writes attempted.", identity, registry=self.registry
        )
        self.write_failures = Counter(
            "demo_write_failures_total", "Writes that failed.", identity, registry=self.registry
        )
        self.duration = Histogram(
            "demo_request_duration_seconds",
            "Time to answer a user request.",
            identity,
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.queue_lag = Gauge(
            "demo_queue_lag_seconds",
            "How far the work queue is behind, in seconds.",
            identity,
            registry=self.registry,
        )
        for code in self.STATUS_CODES[:1] if lazy else self.STATUS_CODES:
            self.requests.labels(**self._identity, code=code)
        for result in ("success",) if lazy else ("success", "failure"):
            self.auth_attempts.labels(**self._identity, result=result)
        self._writes = self.writes.labels(**self._identity)
        if not lazy:
            self.write_failures.labels(**self._identity)
        self.queue_lag.labels(**self._identity).set_function(lag.value)

    def record(self, outcome: Outcome, seconds: float = 0.0) -> None:
        self.duration.labels(**self._identity).observe(seconds)
        self.requests.labels(**self._identity, code=str(outcome.status)).inc()
        result = "success" if outcome.auth_ok else "failure"
        self.auth_attempts.labels(**self._identity, result=result).inc()
        self._writes.inc()
        if not outcome.write_ok:
            self.write_failures.labels(**self._identity).inc()


class DemoState:
    """Identity, knobs, randomness and metrics shared by all request threads."""

    def __init__(
        self,
        service: str,
        version: str,
        environment: str,
        knobs: FaultKnobs | None = None,
        seed: int | None = None,
        lazy_series: bool = False,
        warmup_seconds: float = 0.0,
    ) -> None:
        self.service = service
        self.version = version
        self.environment = environment
        self.rng = random.Random(seed)
        self.lag = QueueLag(random.Random(None if seed is None else seed + 1))
        self.metrics = DemoMetrics(service, version, environment, self.lag, lazy_series)
        self._lock = threading.Lock()
        self._knobs = FaultKnobs()
        self.set_knobs(knobs or FaultKnobs())
        # Set by POST /admin/disable: the "scale to zero" of the rollback runbook.
        # Everything but /metrics answers 503 from then on, health checks included.
        self.disabled = False
        # Like a service warming its caches: /healthz (what the router checks) fails
        # for a while after the start, though /version and user requests answer.
        self.ready_at = time.monotonic() + warmup_seconds

    @property
    def warming_up(self) -> bool:
        return time.monotonic() < self.ready_at

    @property
    def knobs(self) -> FaultKnobs:
        return self._knobs

    def set_knobs(self, knobs: FaultKnobs) -> None:
        with self._lock:
            self._knobs = knobs
            self.lag.set_growth(knobs.queue_lag_growth)

    def handle_user_request(self) -> Outcome:
        started = time.monotonic()
        with self._lock:
            outcome = decide_outcome(self._knobs, self.rng)
            delay = self._knobs.latency_ms / 1000
        if delay:
            time.sleep(delay)
        self.metrics.record(outcome, time.monotonic() - started)
        return outcome


_STATUS_WORDS = {200: "ok", 401: "unauthorized", 500: "error"}


def _make_handler(state: DemoState) -> type[BaseHTTPRequestHandler]:
    class DemoHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so load generators can reuse connections
        # Headers and body go out in separate writes; without TCP_NODELAY every
        # keep-alive response stalls ~40ms on Nagle plus delayed ACK.
        disable_nagle_algorithm = True
        server_version = f"demo-{state.service}/{state.version}"

        def log_message(self, format: str, *args: Any) -> None:
            """Silence per-request logs; load tests would drown the log file."""

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_json(self, status: int, payload: object) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        @property
        def _path(self) -> str:
            return self.path.split("?", 1)[0]

        def do_GET(self) -> None:
            if state.disabled and self._path != "/metrics":
                self._send_json(503, {"error": "disabled", "version": state.version})
            elif self._path == "/healthz":
                if state.warming_up:
                    self._send(503, b"warming up", "text/plain")
                else:
                    self._send(200, b"ok", "text/plain")
            elif self._path == VERSION_PATH:
                # What a deploy system's version check reads; not a user request.
                self._send_json(
                    200,
                    {
                        "service": state.service,
                        "version": state.version,
                        "environment": state.environment,
                    },
                )
            elif self._path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(state.metrics.registry), content_type)
            elif self._path == FAULTS_PATH:
                self._send_json(200, state.knobs.as_dict())
            else:
                self._user_request()

        def do_POST(self) -> None:
            self._read_body()
            if self._path == DISABLE_PATH:
                state.disabled = True
                self._send_json(200, {"disabled": True, "version": state.version})
            elif state.disabled:
                self._send_json(503, {"error": "disabled", "version": state.version})
            elif self._path == FAULTS_PATH:
                self._send_json(405, {"error": "use PUT to set fault knobs"})
            else:
                self._user_request()

        def do_PUT(self) -> None:
            body = self._read_body()
            if self._path != FAULTS_PATH:
                self._send_json(405, {"error": f"PUT is only supported on {FAULTS_PATH}"})
                return
            try:
                data = json.loads(body or b"{}")
            except ValueError as exc:
                self._send_json(400, {"error": f"body is not valid JSON: {exc}", "field": "body"})
                return
            try:
                knobs = parse_knobs(data)
            except KnobError as exc:
                self._send_json(400, {"error": str(exc), "field": exc.field})
                return
            state.set_knobs(knobs)
            self._send_json(200, knobs.as_dict())

        def _user_request(self) -> None:
            outcome = state.handle_user_request()
            self._send_json(
                outcome.status,
                {
                    "service": state.service,
                    "version": state.version,
                    "environment": state.environment,
                    "status": _STATUS_WORDS[outcome.status],
                    "write": "ok" if outcome.write_ok else "failed",
                },
            )

    return DemoHandler


class DemoServer(ThreadingHTTPServer):
    """The HTTP server plus the state it serves, so in-process callers can reach both."""

    daemon_threads = True
    state: DemoState


def make_server(
    port: int,
    service: str,
    version: str,
    environment: str,
    host: str = "127.0.0.1",
    knobs: FaultKnobs | None = None,
    seed: int | None = None,
    lazy_series: bool = False,
    warmup_seconds: float = 0.0,
) -> DemoServer:
    """Bind the service (port 0 picks a free port) without starting to serve."""
    state = DemoState(service, version, environment, knobs, seed, lazy_series, warmup_seconds)
    server = DemoServer((host, port), _make_handler(state))
    server.state = state
    return server


def serve(
    port: int,
    service: str,
    version: str,
    environment: str,
    host: str = "127.0.0.1",
    knobs: FaultKnobs | None = None,
    seed: int | None = None,
    lazy_series: bool = False,
    warmup_seconds: float = 0.0,
) -> None:
    """Serve until interrupted (blocking)."""
    server = make_server(
        port, service, version, environment, host, knobs, seed, lazy_series, warmup_seconds
    )
    bound_host, bound_port = server.server_address[:2]
    print(
        f"demo {service} {version} ({environment}) listening on http://{bound_host}:{bound_port}",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, FaultKnobs]:
    parser = argparse.ArgumentParser(
        prog="python -m controller.demo.service", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--service", default="checkout")
    parser.add_argument("--version", required=True)
    parser.add_argument("--environment", default="production")
    parser.add_argument("--seed", type=int, default=None, help="make outcomes reproducible")
    parser.add_argument(
        "--lazy-series",
        action="store_true",
        help="create error series only on the first error, as labelled counters do",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="/healthz answers 503 for this long after the start (readiness after a "
        "deploy); /version and requests answer at once",
    )
    for knob in KNOB_RANGES:
        parser.add_argument(f"--{knob.replace('_', '-')}", type=float, default=0.0)
    args = parser.parse_args(argv)
    if not 0 <= args.warmup <= 3600:
        parser.error(f"--warmup: must be within 0..3600 seconds, got {args.warmup}")
    try:
        knobs = parse_knobs({knob: getattr(args, knob) for knob in KNOB_RANGES})
    except KnobError as exc:
        parser.error(f"--{exc.field.replace('_', '-')}: {exc.message}")
    return args, knobs


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args, knobs = _parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            args.port,
            args.service,
            args.version,
            args.environment,
            args.host,
            knobs,
            args.seed,
            args.lazy_series,
            args.warmup,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
