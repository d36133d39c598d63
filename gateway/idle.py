"""A bound on how long one wait of a stream (a read from the provider, a write to the
client) may last, with one timer per stream instead of one per wait.

A wait only notes when it began (:meth:`IdleWatchdog.begin`, :meth:`IdleWatchdog.end`).
The timer, armed by the first wait, fires ``idle`` seconds later: it calls ``expire``
if the wait pending then began that long ago, re-arms for a wait that began later,
and lapses when none is pending (the next wait re-arms it). A stream's waits are
many and short, so this costs a clock read per wait, not a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# How early asyncio may run a timer (its clock resolution; a millisecond is ample).
_TIMER_SLACK = 0.001


class IdleWatchdog:
    """Calls ``expire`` once a wait has lasted ``idle`` seconds (it is not called again:
    ``expire`` ends the stream)."""

    __slots__ = ("_expire", "_handle", "_idle", "_loop", "_since")

    def __init__(self, idle: float, expire: Callable[[], None]) -> None:
        self._idle = idle
        self._expire = expire
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None  # when the pending wait began; None: no wait
        self._handle: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """A wait begins."""
        self._since = now = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(now + self._idle, self._check)

    def end(self) -> None:
        """The wait returned."""
        self._since = None

    def stop(self) -> None:
        """No more waits: cancel the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._since is None:
            return
        due = self._since + self._idle
        if due - self._loop.time() > _TIMER_SLACK:
            self._handle = self._loop.call_at(due, self._check)
        else:
            self._since = None
            self._expire()
