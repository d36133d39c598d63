"""``gateway usage``: the budget store read from outside the gateway, shown as a table.

The counters live in Redis, so the report does not need the gateway: an external
Redis (``redis.url``) is read directly. The embedded store (no ``redis.url``, as
``./scripts/serve`` runs it) is a redis-server the gateway starts on a unix socket in
``redis.data_dir`` and stops when it exits. While that gateway runs, its socket is
read; while it is stopped, the data directory's server is started here for the read,
under the same lock (``gateway.lock``) that keeps two gateways off one directory, and
stopped again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.config import Config, Project


class StoreUnreachable(Exception):
    """The budget store cannot be read; ``str()`` is the one line to show."""


def redact(url: str) -> str:
    """A Redis URL without its password (``redis://user:secret@host`` -> ``user:***``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@contextlib.contextmanager
def _store(config: Config) -> Iterator[tuple[str, str]]:
    """(URL, what to call it in a message) of the budget store, reachable while open."""
    from gateway.serve.embedded_redis import LOCK_NAME, EmbeddedRedis

    redis = config.gateway.redis
    if redis.url:
        yield redis.url, f"the Redis at {redact(redis.url)} (redis.url)"
        return
    embedded = EmbeddedRedis(redis.data_dir)
    where = embedded.data_dir
    if embedded.running():
        yield embedded.url, f"the running gateway's embedded redis-server ({embedded.socket})"
        return
    if not (where / LOCK_NAME).exists():
        raise StoreUnreachable(
            f"no budget data in {where}: no gateway ran its embedded redis-server there "
            f"(redis.data_dir {redis.data_dir!r} is relative to the directory the gateway "
            "starts in): run gateway usage from that directory, or set REDIS_URL"
        )
    try:
        embedded.start(lock_wait=0.5)
    except RuntimeError as exc:  # DataDirInUse too: a gateway is starting or stopping
        raise StoreUnreachable(
            f"cannot read the embedded store in {where} while the gateway is stopped: {exc}"
        ) from None
    try:
        yield embedded.url, f"the embedded store in {where} (started for this read)"
    finally:
        embedded.stop()


def read_usage(
    config: Config, project: Project, key_id: str | None, user: str | None
) -> tuple[dict[str, Any], str]:
    """The usage report of ``project`` and where it was read; StoreUnreachable if it
    cannot be."""
    from gateway.budget import BudgetStore, StoreUnavailable
    from gateway.serve.resources import redis_client
    from gateway.usage_report import usage_report

    gw = config.gateway
    timeout = max(gw.redis.timeout_ms / 1000, 1.0)

    async def report(url: str) -> dict[str, Any]:
        redis = redis_client(url, timeout)
        try:
            store = BudgetStore(
                redis, gw.redis.key_prefix, timeout, gw.limits.reservation_ttl_seconds
            )
            return await usage_report(store, config, project, key_id, user)
        finally:
            await redis.aclose()

    with _store(config) as (url, where):
        try:
            return asyncio.run(report(url)), where
        except StoreUnavailable as exc:
            hint = ": is it running, and is redis.url (REDIS_URL) right?" if gw.redis.url else ""
            raise StoreUnreachable(
                f"budget store unreachable: {where} did not answer ({exc}){hint}"
            ) from None


def dollars(nano: int, rounding: str = ROUND_CEILING) -> str:
    """Nano-USD as dollars to the micro-dollar: ``$0.001235`` (rounded up by default:
    an amount used is never shown lower than it is)."""
    value = (Decimal(nano) / 1_000_000_000).quantize(Decimal("0.000001"), rounding=rounding)
    return f"${value:,}"


def _amount(dimension: str, value: int, rounding: str = ROUND_CEILING) -> str:
    return dollars(value, rounding) if dimension == "cost_nano_usd" else f"{value:,}"


def table(report: dict[str, Any], where: str) -> str:
    """The report as aligned columns: one row per counter and dimension."""
    head = ("scope", "window", "dimension", "used", "reserved", "cap", "left", "resets at")
    rows: list[tuple[str, ...]] = []
    for counter in report["counters"]:
        scope = counter["scope"]
        if scope != "project":
            scope += f":{counter.get('id') or counter.get('user')}"
        for dim, v in counter["dimensions"].items():
            cap, left = "-", "-"
            if v["cap"] is not None:
                cap = _amount(dim, v["cap"])
                room = max(v["cap"] - v["used"] - v["reserved"], 0)
                left = _amount(dim, room, ROUND_FLOOR)
            rows.append(
                (
                    scope,
                    counter["window"],
                    "cost_usd" if dim == "cost_nano_usd" else dim,
                    _amount(dim, v["used"]),
                    _amount(dim, v["reserved"]),
                    cap,
                    left,
                    counter["resets_at"] or "never",
                )
            )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    numeric = {3, 4, 5, 6}

    def line(row: tuple[str, ...]) -> str:
        cells = (
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        )
        return "  ".join(cells).rstrip()

    title = (
        f"project {report['project']} ({report['project_id']}, org {report['org']}), from {where}"
    )
    return "\n".join([title, "", line(head), *map(line, rows)])
