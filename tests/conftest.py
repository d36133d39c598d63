"""Shared fixtures: a real Redis (REDIS_URL, or a private redis-server), a real fake
upstream over TCP, and the gateway app served by pytest-aiohttp on a real socket."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.config import Config, load_config
from gateway.http.app import create_app
from tests.fakeupstream import FakeUpstream
from tests.harness import Credentials, RedisServer, write_config


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "")
    if url:
        yield url
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    # No socket timeout (redis-py 8 defaults to 5 s, running each command under
    # wait_for, which on Python 3.11 can swallow a cancellation of the test's task).
    client = Redis.from_url(redis_url, socket_timeout=None)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def creds(tmp_path: Path, upstream: FakeUpstream, redis_url: str) -> Credentials:
    return write_config(tmp_path / "config", upstream.base_url, redis_url)


GatewayFactory = Callable[..., Awaitable[tuple[TestClient[Any, Any], Config, Credentials]]]


@pytest.fixture
def make_gateway(
    tmp_path: Path,
    upstream: FakeUpstream,
    redis_url: str,
    aiohttp_client: Any,
) -> GatewayFactory:
    """Build a gateway with config overrides: ``await make_gateway(projects=..., gateway=...)``."""
    counter = 0

    async def factory(
        **overrides: Any,
    ) -> tuple[TestClient[Any, Any], Config, Credentials]:
        nonlocal counter
        counter += 1
        url = overrides.pop("redis_url", redis_url)
        creds = write_config(tmp_path / f"config{counter}", upstream.base_url, url, **overrides)
        config = load_config(creds.config_dir, creds.env)
        client = await aiohttp_client(
            create_app(config, url), server_kwargs={"handler_cancellation": True}
        )
        return client, config, creds

    return factory


@pytest.fixture
async def gateway(
    make_gateway: GatewayFactory,
) -> tuple[TestClient[Any, Any], Config, Credentials]:
    return await make_gateway()
