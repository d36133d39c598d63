"""The per-process key cache on a real Redis: a change published by any writer drops
the key at once (pub/sub, proved with a cache that would otherwise keep it a minute);
without the channel the 1 s TTL bounds it; the listener comes back after its
connection is killed; concurrent lookups of one prefix share one read; last-used
times are written at most once a minute per key."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from gateway.budget import RedisLike
from gateway.config import Config, load_config
from gateway.control.cache import ApiKeyCache, LastUsed
from gateway.control.records import ApiKey
from gateway.control.service import Actor, KeyService
from gateway.control.store import KeyStore
from gateway.serve.resources import redis_client
from tests.support.harness import Credentials

ACTOR = Actor("test")


@dataclass
class Setup:
    store: KeyStore
    service: KeyService
    client: RedisLike


@pytest.fixture
async def setup(creds: Credentials, redis_url: str) -> AsyncIterator[Setup]:
    config: Config = load_config(creds.config_dir, creds.env)
    client = redis_client(redis_url, 1.0)
    store = KeyStore(client, "t" + uuid.uuid4().hex[:12], lambda: 1.0)
    try:
        yield Setup(store, KeyService(config, store), client)
    finally:
        await client.aclose()


async def new_key(setup: Setup) -> ApiKey:
    answer = await setup.service.create("acme", {"name": "cached"}, ACTOR, None)
    stored = await setup.store.get(answer.body["prefix"])
    assert stored is not None
    return stored.key


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    for _ in range(int(limit / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not so after {limit} s")


@contextlib.asynccontextmanager
async def listening(cache: ApiKeyCache) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(cache.listen())
    try:
        await until(lambda: cache.listening)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def revoked_after(cache: ApiKeyCache, key: ApiKey, limit: float) -> float:
    started = time.monotonic()
    while True:
        seen = await cache.get(key.prefix)
        elapsed = time.monotonic() - started
        if seen is not None and seen.revoked_at is not None:
            return elapsed
        assert elapsed < limit, f"the cache still has the key unrevoked after {elapsed:.2f} s"
        await asyncio.sleep(0.01)


async def test_a_published_change_drops_the_key_at_once(setup: Setup) -> None:
    cache = ApiKeyCache(setup.store, ttl_s=60.0)  # only an invalidation can refresh it
    key = await new_key(setup)
    async with listening(cache):
        cached = await cache.get(key.prefix)
        assert cached is not None
        assert cached.revoked_at is None
        await setup.service.revoke("acme", key.id, ACTOR, None)
        took = await revoked_after(cache, key, 0.5)
    assert took < 0.5


async def test_without_the_channel_the_ttl_bounds_a_stale_key_to_a_second(setup: Setup) -> None:
    cache = ApiKeyCache(setup.store)  # the default TTL, no listener
    key = await new_key(setup)
    assert await cache.get(key.prefix) is not None
    read_at = time.monotonic()
    await setup.service.revoke("acme", key.id, ACTOR, None)
    stale = await cache.get(key.prefix)
    assert stale is not None
    assert stale.revoked_at is None  # the cached copy, within its second
    await revoked_after(cache, key, 1.5)
    assert 0.9 <= time.monotonic() - read_at <= 1.5


async def test_the_listener_comes_back_after_its_connection_is_killed(
    setup: Setup, redis: Redis
) -> None:
    cache = ApiKeyCache(setup.store, ttl_s=60.0)
    key = await new_key(setup)
    async with listening(cache):
        assert await cache.get(key.prefix) is not None
        killed = await redis.client_kill_filter(_type="pubsub")
        assert killed >= 1
        await until(lambda: not cache.listening)  # lost, then back (the cache cleared)
        await until(lambda: cache.listening)
        assert await cache.get(key.prefix) is not None
        await setup.service.revoke("acme", key.id, ACTOR, None)
        await revoked_after(cache, key, 0.5)


async def test_concurrent_lookups_of_one_prefix_share_one_read(setup: Setup, redis: Redis) -> None:
    cache = ApiKeyCache(setup.store)
    key = await new_key(setup)
    unknown = "kt_live_" + "Q" * 8

    async def gets() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))

    before = await gets()
    found = await asyncio.gather(*(cache.get(key.prefix) for _ in range(50)))
    missing = await asyncio.gather(*(cache.get(unknown) for _ in range(50)))
    assert all(f == key for f in found)
    assert missing == [None] * 50
    assert await cache.get(unknown) is None  # an unknown prefix is cached too
    assert await gets() - before == 2


async def test_last_used_is_written_at_most_once_a_minute_per_key(setup: Setup) -> None:
    now = [1_000_000.0]
    last_used = LastUsed(setup.store, clock=lambda: now[0])
    last_used.touch("key_a")
    last_used.touch("key_a")
    last_used.touch("key_b")
    await last_used.flush()
    assert await setup.store.last_used(["key_a", "key_b"]) == {
        "key_a": 1_000_000,
        "key_b": 1_000_000,
    }
    now[0] += 59
    last_used.touch("key_a")
    await last_used.flush()
    assert (await setup.store.last_used(["key_a"]))["key_a"] == 1_000_000  # not yet
    now[0] += 1
    last_used.touch("key_a")
    await last_used.flush()
    assert (await setup.store.last_used(["key_a"]))["key_a"] == 1_000_060
