"""The long-lived resources of a serving process: the Redis client, the upstream HTTP
session, and the providers built from the config over that session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.budget import RedisLike
from gateway.config import Config
from gateway.context import GatewayState
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.demo import DemoProvider
from gateway.providers.openai import OpenAIProvider

HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
REDIS_MAX_CONNECTIONS = 512  # per process; a busy pool makes callers wait, not fail


def build_providers(config: Config, session: aiohttp.ClientSession) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, spec in config.gateway.providers.items():
        if spec.kind == "demo":
            providers[name] = DemoProvider(name, spec)
        elif spec.kind == "anthropic":
            providers[name] = AnthropicProvider(name, spec, session)
        else:
            providers[name] = OpenAIProvider(name, spec, session)
    return providers


def redis_client(url: str, timeout_s: float) -> RedisLike:
    """A Redis client with tight timeouts and no hidden retries.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) selects Redis Cluster: the
    node given is a seed; every budget script touches one slot (one project's hash tag).
    The pool blocks (up to the timeout) when every connection is busy, so a burst
    waits for a connection instead of failing with 503.
    """
    if "+cluster://" in url.split("?", 1)[0]:
        return RedisCluster.from_url(
            url.replace("+cluster://", "://", 1),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=REDIS_MAX_CONNECTIONS,
        )
    # socket_timeout=None (redis-py 8 defaults to 5 s): every call is already bounded by
    # asyncio.timeout in the store (and the auto-pipeline's reply timeout), while a socket
    # timeout runs each command under wait_for, which costs a task per command and, on
    # Python 3.11, can swallow a cancellation.
    pool = BlockingConnectionPool.from_url(
        url,
        socket_timeout=None,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return Redis.from_pool(pool)  # the client owns (and closes) its pool


def resources(
    state: GatewayState, redis: RedisLike
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context: opens the upstream session and the providers, prepares
    the store; at the end, waits for pending settle retries before closing them all."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
        # No cookie jar: one session serves every project, so a cookie a provider sets
        # (load balancers do) must not ride along on other projects' calls.
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
        )
        app[HTTP_SESSION] = session
        state.providers = build_providers(state.config, session)
        await state.store.prepare()
        yield
        state.ready = False
        if state.background:  # pending settle retries finish before the store closes
            wait = state.config.gateway.limits.settle_wait_seconds
            await asyncio.wait(state.background, timeout=wait)
        # Still retrying (the store is down): stop them; each logs what it could not record.
        for task in list(state.background):
            task.cancel()
        await asyncio.gather(*state.background, return_exceptions=True)
        await session.close()
        await redis.aclose()

    return ctx
