"""Traffic routers: the only code that moves real user traffic."""

from controller.traffic.base import RouterError, TrafficRouter
from controller.traffic.haproxy import HAProxyRouter, haproxy_command

__all__ = ["HAProxyRouter", "RouterError", "TrafficRouter", "haproxy_command"]
