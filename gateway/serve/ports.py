"""Before ``gateway serve`` says it listens: can it bind its ports?

A port another process holds would otherwise surface as a worker's traceback, after
the gateway had logged that it was listening (or, with ``--workers N``, as workers
restarted until the supervisor gives up). Each address is bound the way the server
binds it (every address the host resolves to, ``SO_REUSEADDR``, IPv6 sockets
v6-only) but without ``SO_REUSEPORT``: a gateway already serving there with workers
holds the port too, and sharing it with that one would split the traffic between
two gateways.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator


class PortUnavailable(Exception):
    """A listen address that cannot be bound; ``str()`` is the line to show."""


def free_port(host: str) -> int:
    """A port the system has free on ``host`` now (for a configured port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def holding(
    addresses: list[tuple[str, int, str, str]],
) -> Iterator[None]:
    """Bind every ``(host, port, what, hint)`` at once (so two of them on one port
    conflict, as they would when served), release them on exit; PortUnavailable names
    the first that cannot be bound, ``what`` it is and ``hint`` how to move it."""
    held: list[socket.socket] = []
    try:
        for host, port, what, hint in addresses:
            try:
                held.extend(_bind_all(host, port))
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    raise PortUnavailable(
                        f"{what} {port} on {host or '*'} is in use: {reason}; stop what "
                        f"listens there, or {hint}"
                    ) from None
                raise PortUnavailable(
                    f"cannot listen on {host or '*'}:{port} ({what}): {reason}; {hint}"
                ) from None
        yield
    finally:
        for s in held:
            s.close()


def _bind_all(host: str, port: int) -> list[socket.socket]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            bound.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(address)
            s.listen(1)  # two bound sockets with SO_REUSEADDR conflict only once listening
    except BaseException:
        for s in bound:
            s.close()
        raise
    return bound
