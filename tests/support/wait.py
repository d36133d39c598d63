"""Waiting for a condition that the gateway (another task or process) makes true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 5.0,  # noqa: ASYNC109
    what: str = "condition",
    interval: float = 0.02,
) -> None:
    """Poll ``check`` every ``interval`` s until it is true; fail after ``timeout`` s."""
    # A deadline, not asyncio.timeout: a cancellation can be swallowed inside redis-py
    # on Python 3.11, and the loop would then never end.
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
