"""Shared fixtures: a real Redis (REDIS_URL, or a private redis-server), a real fake
upstream over TCP, the gateway app served by pytest-aiohttp on a real socket, and
``gateway serve`` subprocesses (tests/support/process.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from gateway.budget import BudgetStore
from gateway.config import load_config
from gateway.http.app import create_app
from tests.support.harness import (
    Credentials,
    Gateway,
    GatewayFactory,
    MakeCreds,
    SdkFactory,
    StoreFactory,
    write_config,
)
from tests.support.process import GatewayProcess, Spawn
from tests.support.redis import RedisServer
from tests.support.upstream import FakeUpstream


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
async def second() -> AsyncIterator[FakeUpstream]:
    """A second fake upstream: another provider, another origin."""
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


@pytest.fixture
def make_creds(tmp_path: Path, upstream: FakeUpstream, redis_url: str) -> MakeCreds:
    """Write another config directory: ``make_creds(limits=..., env=..., **overrides)``
    (``write_config``'s overrides; ``limits`` replaces the whole limits section, with a
    60 s reservation ttl unless it says otherwise; ``env`` adds to the environment)."""
    counter = 0

    def factory(
        limits: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Credentials:
        nonlocal counter
        counter += 1
        if limits is not None:
            # write_config merges one level deep: this replaces the harness's section whole.
            gateway = dict(overrides.pop("gateway", None) or {})
            gateway["limits"] = {"reservation_ttl_seconds": 60, **limits}
            overrides["gateway"] = gateway
        made = write_config(
            tmp_path / f"config{counter}", upstream.base_url, redis_url, **overrides
        )
        made.env.update(env or {})
        return made

    return factory


@pytest.fixture
def make_gateway(
    tmp_path: Path,
    upstream: FakeUpstream,
    redis_url: str,
    aiohttp_client: AiohttpClient,
) -> GatewayFactory:
    """Build a gateway with config overrides: ``await make_gateway(projects=..., gateway=...)``."""
    counter = 0

    async def factory(**overrides: Any) -> Gateway:
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
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start ``gateway serve`` subprocesses; every process group is killed at teardown."""
    started: list[GatewayProcess] = []

    async def factory(creds: Credentials, workers: int = 1) -> GatewayProcess:
        proc = GatewayProcess(creds, tmp_path / f"gateway{len(started)}.log", workers)
        started.append(proc)
        await proc.start(timeout=30)
        return proc

    try:
        yield factory
    finally:
        for proc in started:
            proc.kill()


@pytest.fixture
async def processes() -> AsyncIterator[list[GatewayProcess]]:
    """``gateway serve`` processes a test starts itself: killed at its teardown."""
    procs: list[GatewayProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client opening a new connection per request (as independent clients would)."""
    timeout = aiohttp.ClientTimeout(total=15)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


@pytest.fixture
async def http_pool() -> AsyncIterator[aiohttp.ClientSession]:
    """A client keeping its connections alive, as many at once as asked for, no timeout."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
async def sdk() -> AsyncIterator[SdkFactory]:
    """``sdk(client, api_key, project="alpha")``: the official OpenAI SDK's client of a
    project of an in-process gateway (no retries), closed at teardown."""
    clients: list[openai.AsyncOpenAI] = []

    def make(
        client: TestClient[Any, Any], api_key: str, project: str = "alpha"
    ) -> openai.AsyncOpenAI:
        api = openai.AsyncOpenAI(
            base_url=str(client.make_url(f"/v1/projects/{project}")),
            api_key=api_key,
            max_retries=0,
            timeout=15,
        )
        clients.append(api)
        return api

    try:
        yield make
    finally:
        for api in clients:
            await api.close()


@pytest.fixture
async def make_store(redis_url: str) -> AsyncIterator[StoreFactory]:
    """``make_store(ttl_s=60, timeout_s=0.5, url=None, prefix=None)``: a BudgetStore on
    its own client (closed at teardown) and, unless given, its own key prefix."""
    clients: list[Redis] = []

    def factory(
        *,
        ttl_s: int = 60,
        timeout_s: float = 0.5,
        url: str | None = None,
        prefix: str | None = None,
    ) -> BudgetStore:
        client = Redis.from_url(url or redis_url)
        clients.append(client)
        return BudgetStore(client, prefix or "t" + uuid.uuid4().hex[:12], timeout_s, ttl_s)

    try:
        yield factory
    finally:
        for client in clients:
            await client.aclose()
