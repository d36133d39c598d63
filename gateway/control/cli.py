"""``gateway keys list|revoke|rotate``: the API-managed keys, from beside the gateway.

The commands read and write the Redis the gateway uses, as ``gateway usage`` reads it
(gateway.usage_cli: ``redis.url``, else the embedded store, started for the call while
the gateway is stopped), with the same operations as the HTTP API (a revocation is
published: every running gateway process drops the key within a second).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.config import Config
from gateway.control.service import Actor, KeyService
from gateway.control.store import KeyStore
from gateway.errors import GatewayError

T = TypeVar("T")
ACTOR = Actor("cli")


class KeysFailed(Exception):
    """The command failed; ``str()`` is the line to show, ``code`` the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run(config: Config, operation: Callable[[KeyService], Awaitable[T]]) -> T:
    """``operation`` against the gateway's Redis; KeysFailed if it fails."""
    from gateway.serve.resources import redis_client
    from gateway.usage_cli import StoreUnreachable, _store

    gw = config.gateway
    timeout = max(gw.redis.timeout_ms / 1000, 1.0)

    async def call(url: str) -> T:
        redis = redis_client(url, timeout)
        try:
            store = KeyStore(redis, gw.redis.key_prefix, lambda: timeout)
            return await operation(KeyService(config, store))
        finally:
            await redis.aclose()

    try:
        with _store(config) as (url, where):
            try:
                return asyncio.run(call(url))
            except GatewayError as exc:
                if exc.status == 503:
                    raise KeysFailed(f"key store unreachable: {where} did not answer", 1) from None
                raise KeysFailed(exc.message, 2) from None
    except StoreUnreachable as exc:
        raise KeysFailed(str(exc), 1) from None


def list_keys(config: Config, org: str) -> list[dict[str, Any]]:
    return run(config, lambda service: service.list_keys(org))


def revoke(config: Config, org: str, key_id: str) -> dict[str, Any]:
    async def op(service: KeyService) -> dict[str, Any]:
        return (await service.revoke(org, key_id, ACTOR, None)).body

    return run(config, op)


def rotate(config: Config, org: str, key_id: str, grace: int) -> dict[str, Any]:
    async def op(service: KeyService) -> dict[str, Any]:
        return (await service.rotate(org, key_id, {"grace_seconds": grace}, ACTOR, None)).body

    return run(config, op)


def when(at: int | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def table(keys: list[dict[str, Any]], org: str) -> str:
    """The keys as aligned columns (never a secret: a key's plaintext is not stored)."""
    head = ("id", "source", "status", "name", "scopes", "prefix", "created", "expires", "used")
    rows = [
        (
            k["id"],
            k["source"] + (" (read-only)" if k["read_only"] else ""),
            k["status"],
            k["name"],
            ",".join(k["scopes"]),
            k["prefix"],
            when(k["created_at"]),
            when(k["expires_at"]),
            when(k["last_used_at"]),
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

    return "\n".join([f"API keys of org {org}", "", line(head), *map(line, rows)])


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2)
