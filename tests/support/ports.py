"""Free loopback ports (stdlib only: used by both suites' interpreters)."""

from __future__ import annotations

import socket


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
