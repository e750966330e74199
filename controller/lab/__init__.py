"""Real local servers (Prometheus, HAProxy, Redis, demo services) on free loopback ports.

Used by ``canary demo`` and the integration tests so both exercise the same
binaries production uses instead of fakes.
"""

from controller.lab.binaries import require_binary
from controller.lab.demo import DemoServiceProcess, start_demo_service
from controller.lab.errors import LabError, MissingBinaryError
from controller.lab.haproxy import HAProxyServer, start_haproxy
from controller.lab.ports import free_port
from controller.lab.process import ManagedProcess, ProcessGroup, http_ready, tcp_ready
from controller.lab.prometheus import PrometheusServer, start_prometheus
from controller.lab.redis import RedisServer, ensure_redis

__all__ = [
    "DemoServiceProcess",
    "HAProxyServer",
    "LabError",
    "ManagedProcess",
    "MissingBinaryError",
    "ProcessGroup",
    "PrometheusServer",
    "RedisServer",
    "ensure_redis",
    "free_port",
    "http_ready",
    "require_binary",
    "start_demo_service",
    "start_haproxy",
    "start_prometheus",
    "tcp_ready",
]
