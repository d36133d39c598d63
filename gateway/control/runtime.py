"""A serving process's control-plane parts (the key store, the key cache, the
last-used times), kept on the applications that use them, and their running life."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.budget import RedisLike
from gateway.control.cache import ApiKeyCache, LastUsed
from gateway.control.store import KeyStore


@dataclass(frozen=True, slots=True)
class ControlPlane:
    store: KeyStore
    cache: ApiKeyCache
    last_used: LastUsed


# On the /v1 and /v1/orgs sub-applications (their middlewares read it from request.app).
CONTROL = web.AppKey("control_plane", ControlPlane)


def control_plane(
    redis: RedisLike, key_prefix: str, timeout_s: Callable[[], float]
) -> ControlPlane:
    store = KeyStore(redis, key_prefix, timeout_s)
    return ControlPlane(store, ApiKeyCache(store), LastUsed(store))


def control_runtime(control: ControlPlane) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context: the invalidation listener and the last-used flush run
    while the app does; last-used times are flushed once more at the end (before the
    Redis client closes: append it after the resources' context)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.ensure_future(control.cache.listen()),
            asyncio.ensure_future(control.last_used.run()),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await control.last_used.flush()

    return ctx
