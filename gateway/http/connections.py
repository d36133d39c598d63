"""Connection limits of the API listener: how many sockets, whose, and for how long
before a request's headers arrive (slowloris).

aiohttp has no header-read deadline (a connection that never finishes its headers was
held for the keep-alive timeout, 75 s, or longer while it trickled bytes) and no cap
on connections: 1,007 such sockets filled the fd table and health probes failed. Here
every accepted connection must complete its headers within ``header_timeout`` (then
it is closed), and a connection past ``max_connections`` in the process or past
``max_per_address`` from one client address is closed as soon as it is accepted. The
body's own deadline is the parse step's (``limits.body_timeout_seconds``).

The hook is aiohttp's protocol class (``RequestHandler``), handed out by the runner
(gateway.http.runner): the versions are pinned by the lock file and the process tests
exercise both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import Any

from aiohttp.web_server import Server

from gateway.http.malformed import GatewayRequestHandler

log = logging.getLogger("gateway.connections")
# File descriptors kept out of the connection cap: the Redis pool (512), upstream
# connections (one per request being served, so the cap is halved), logs, the rest.
_RESERVED_FDS = 600


class ConnectionGuard:
    """Counts of open connections, in total and by client address."""

    def __init__(self, max_total: int, max_per_address: int, header_timeout: float) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.header_timeout = header_timeout
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.refused = 0

    def admit(self, address: str) -> bool:
        if self.total >= self.max_total or self.by_address.get(address, 0) >= self.max_per_address:
            self.refused += 1
            return False
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        left = self.by_address.get(address, 0) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)


def fd_bounded(max_connections: int) -> int:
    """``max_connections`` or fewer, so that the process's fd table cannot fill: the
    soft RLIMIT_NOFILE is first raised to the hard one (what the system allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    room = max((soft - _RESERVED_FDS) // 2, 16)
    if room < max_connections:
        log.warning(
            "limits.max_connections lowered to what the fd limit allows",
            extra={"configured": max_connections, "effective": room, "nofile": soft},
        )
        return room
    return max_connections


class GuardedRequestHandler(GatewayRequestHandler):
    """aiohttp's connection protocol, with the guard's cap and header deadline, and the
    gateway's JSON answers to requests that fail before the application (its base)."""

    __slots__ = ("_address", "_admitted", "_guard", "_header_timer", "_seen")

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address = ""
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._seen = 0  # requests whose headers were complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._guard.admit(self._address):
            transport.close()  # before aiohttp sees it: no task, no parser, no timer
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release(self._address)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count > self._seen:  # headers complete: the body has its own
            self._seen = self._request_count
            self._disarm()
        elif self._current_request is None and self._header_timer is None:
            self._arm()  # the start of the next request's headers, on a kept-alive one

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self._loop.call_later(self._guard.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._current_request is None and self._request_count == self._seen:
            self.force_close()
            if self.transport is not None:
                self.transport.close()
