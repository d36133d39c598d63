"""The metrics listener: ``GET /metrics`` on its own address, never the API port.

The exposition names every org's projects, caps and spend, and a scrape reads Redis:
neither is for tenants. It is served on ``metrics.listen`` (loopback by default), by
one process only (with ``--workers N``, the worker in the first slot, whose scrape
aggregates every worker's values), optionally behind a bearer token.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.context import STATE, GatewayState
from gateway.errors import Unauthorized
from gateway.http.middleware.errors import error_middleware
from gateway.usage_report import refresh_budget_gauges


def metrics_app(state: GatewayState, token: str = "") -> web.Application:
    """An application serving ``GET /metrics`` from ``state`` (the API app's state);
    with ``token``, only to a caller sending ``Authorization: Bearer <token>``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=1024)
    app[STATE] = state
    expected = f"Bearer {token}".encode()

    async def metrics_endpoint(request: web.Request) -> web.Response:
        if token:
            sent = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(sent, expected):  # constant time: no prefix oracle
                raise Unauthorized("metrics_token")
        await refresh_budget_gauges(state)
        body = state.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics_endpoint)
    return app


def metrics_listener(
    address: tuple[str, int], token: str
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for the API app: serve its metrics on ``address`` while it runs.
    A bind failure (the port taken) fails the start: metrics silently missing would
    hide every alert."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(metrics_app(app[STATE], token), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, address[0], address[1])
            await site.start()
            yield
        finally:
            await runner.cleanup()

    return listener
