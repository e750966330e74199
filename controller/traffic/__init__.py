"""Traffic routers: the only code that moves real user traffic."""

from controller.traffic.base import RouterError, Serving, TrafficRouter
from controller.traffic.haproxy import HAProxyRouter, haproxy_command

__all__ = ["HAProxyRouter", "RouterError", "Serving", "TrafficRouter", "haproxy_command"]
