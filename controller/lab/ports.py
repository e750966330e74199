"""Pick free loopback ports so several labs (and CI jobs) can run side by side."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The kernel picks the port; there is a small window before the caller binds
    it, which is acceptable for a lab but is why servers are still checked with
    ``wait_ready`` after starting.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
