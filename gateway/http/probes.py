"""Probes for load balancers and orchestrators: ``GET /healthz`` (the process answers)
and ``GET /readyz`` (it accepts requests and reaches its budget store)."""

from __future__ import annotations

from aiohttp import web

from gateway.context import STATE
from gateway.errors import json_error


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store_ok = await state.store.ping()
    if state.ready and store_ok:
        return web.json_response({"status": "ready"})
    checks = {"budget_store": "ok" if store_ok else "unreachable", "accepting": state.ready}
    return json_error(503, {"detail": "not ready", "checks": checks}, {"Retry-After": "1"})
