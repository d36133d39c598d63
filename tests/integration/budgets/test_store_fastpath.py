"""The store's EVALSHA fast path: scripts lost by Redis are reloaded, and a call cut by
its timeout leaves the connection pool usable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.budget import Amounts, BudgetStore, Counter, StoreUnavailable
from gateway.serve.resources import redis_client

COUNTERS = [Counter("project", "p", "day", "2=1000")]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[BudgetStore]:
    client = redis_client(redis_url, 1.0)
    try:
        yield BudgetStore(client, "fp" + uuid.uuid4().hex[:10], 1.0, 60)
    finally:
        await client.aclose()


async def test_scripts_flushed_by_redis_are_reloaded(store: BudgetStore) -> None:
    await store.redis.script_flush()
    held = await store.reserve("p1", "r1", COUNTERS, Amounts(10, 5, 7))
    await store.redis.script_flush()
    assert await store.settle(held, Amounts(3, 2, 1)) is True
    state = await store.redis.hgetall(held.counter_keys[0])
    assert state[b"u2"] == b"5"
    assert state[b"r2"] == b"0"


async def test_a_call_cut_by_its_timeout_leaves_the_pool_usable(store: BudgetStore) -> None:
    # A script that outlives the client's timeout (busy Redis), then normal calls again.
    slow = store.redis.register_script(
        "local t = redis.call('TIME') while true do "
        "local n = redis.call('TIME') "
        "if (n[1] - t[1]) * 1e6 + (n[2] - t[2]) > 300000 then "
        "return 1 end end"
    )
    store.timeout_s = 0.1
    with pytest.raises(StoreUnavailable):
        await store._call(slow, [], [])
    await asyncio.sleep(0.4)  # the busy script ends
    store.timeout_s = 1.0
    held = await store.reserve("p1", "r2", COUNTERS, Amounts(10, 5, 7))
    assert await store.settle(held, Amounts(1, 1, 1)) is True
