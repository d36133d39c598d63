"""Free TCP ports on 127.0.0.1 for the servers the tests start."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this test run handed out before: the
    kernel can give a just-closed ephemeral port again at once (a gateway's API port
    and its metrics port were once the same)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
