"""Many demo service instances in one process, for runs with dozens of services.

Each instance is the same demo service as ``controller.demo.service`` (its own port,
its own metrics registry, fault knobs, /admin/disable), served from a thread; one
process instead of a hundred keeps a 50-service benchmark within a small machine.

Run: ``python -m controller.demo.fleet --spec fleet.json --ports ports.json``, where
the spec is ``{"instances": [{"service": "svc-01", "version": "1.0.0", "environment":
"production", "faults": {"error_rate": 0.5}, "lazy_series": true, "port": 0}]}``.
Port 0 (the default) lets the kernel pick a free port: no race with other programs
for ports picked in advance. Once every instance listens it writes the port of each
instance, in spec order, as a JSON list to the ports file and prints ``fleet ready``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.demo.service import DemoServer, make_server, parse_knobs


def start_instances(spec: dict[str, Any]) -> list[DemoServer]:
    """Bind every instance of the spec and serve each from a daemon thread."""
    servers = [
        make_server(
            int(item.get("port", 0)),
            str(item["service"]),
            str(item["version"]),
            str(item.get("environment", "production")),
            knobs=parse_knobs(item.get("faults", {})),
            lazy_series=bool(item.get("lazy_series", False)),
        )
        for item in spec["instances"]
    ]
    for server in servers:
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True
        ).start()
    return servers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.demo.fleet", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--spec", type=Path, required=True, help="JSON file of instances")
    parser.add_argument("--ports", type=Path, required=True, help="where to write the ports")
    args = parser.parse_args(argv)
    servers = start_instances(json.loads(args.spec.read_text()))
    ports = [server.server_address[1] for server in servers]
    partial = args.ports.with_suffix(".partial")
    partial.write_text(json.dumps(ports))
    partial.replace(args.ports)
    print(f"fleet ready: {len(servers)} instances", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
