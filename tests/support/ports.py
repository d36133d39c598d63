"""Free TCP ports on 127.0.0.1 for the servers the tests start in other processes
(redis-server, ``gateway serve``): chosen here, bound there a moment later.

Choosing a port by binding port 0 and closing the socket leaves a window: until the
server binds it, the kernel may hand the same port to anyone else binding port 0 or
connecting out, and under pytest-xdist another worker's choice may well be it (each
worker is a process of its own, with its own memory of what it handed out). So the
ports come from below the kernel's ephemeral range (never handed out by it), and
each xdist worker draws from a block of its own; a port is checked free by binding it
before it is handed out, and never handed out twice by one process.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

BLOCK = 1000  # ports per process: far more than one worker's tests hold at once
FIRST = 15_000  # the first block (the process that is not an xdist worker)
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel picks for port-0 binds and outgoing connections."""
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
    except (OSError, IndexError):
        return 32_768  # Linux's default
    return int(low)


def _block() -> range:
    """This process's ports: block 0 outside xdist, block n + 1 for worker ``gw<n>``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    blocks = max(1, (_ephemeral_low() - FIRST) // BLOCK)
    start = FIRST + (index % blocks) * BLOCK
    return range(start, start + BLOCK)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, from this process's block, never one this process
    handed out before (a gateway's API port and its metrics port were once the same).
    The walk starts at a random offset: suites run at once from other checkouts on
    the same machine use the same blocks."""
    block = _block()
    offset = random.randrange(len(block))
    for i in range(len(block)):
        port = block[(offset + i) % len(block)]
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port left in {block.start}-{block.stop - 1}")
