"""The pacing of settle (and release) retries while the budget store is unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.pipeline.hold import SETTLE_RETRY_DELAYS, SETTLE_RETRY_EVERY, retry_until_done


def _recorder(succeed_at: int | None) -> tuple[list[float], Callable[[], Awaitable[bool]]]:
    times: list[float] = []

    async def attempt() -> bool:
        times.append(asyncio.get_running_loop().time())
        return succeed_at is not None and len(times) >= succeed_at

    return times, attempt


async def test_retries_stop_at_the_first_success() -> None:
    times, attempt = _recorder(succeed_at=3)
    assert await retry_until_done(60.0, attempt) is True
    assert len(times) == 3


async def test_retries_quick_at_first_then_steady_until_the_window_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A virtual clock: the pauses are long, the test is not.
    clock = [0.0]
    real_sleep = asyncio.sleep

    async def virtual_sleep(delay: float) -> None:
        clock[0] += delay
        await real_sleep(0)

    times: list[float] = []

    async def attempt() -> bool:
        times.append(clock[0])
        return False

    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: clock[0])
    monkeypatch.setattr(asyncio, "sleep", virtual_sleep)
    assert await retry_until_done(30.0, attempt) is False
    monkeypatch.undo()
    quick = list(SETTLE_RETRY_DELAYS)
    expected, at = [], 0.0
    for delay in quick:
        at += delay
        expected.append(at)
    while at + SETTLE_RETRY_EVERY <= 30.0:
        at += SETTLE_RETRY_EVERY
        expected.append(at)
    assert times == expected
    assert times[-1] <= 30.0 < times[-1] + SETTLE_RETRY_EVERY
    assert len(times) > len(SETTLE_RETRY_DELAYS)  # past the quick ones
