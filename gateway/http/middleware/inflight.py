"""In-flight caps: at most ``limits.max_in_flight_per_key`` requests of one API key and
``limits.max_in_flight_per_org`` of one org are served at once by this process; past
them, 429 + Retry-After, before the body is read.

Runs after auth (the caller is known) and before parse, so a tenant's bodies being
read and decoded are bounded in number too.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.context import PRINCIPAL, PROJECT, REQUEST_STATE
from gateway.errors import RateLimited


@web.middleware
async def inflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    principal = request.get(PRINCIPAL)
    if principal is None:  # no such route: nothing authenticated, nothing to count
        return await handler(request)
    state = request[REQUEST_STATE]
    limits = state.config.gateway.limits
    project = request[PROJECT]
    # A session token counts for the key that minted it; one the operator minted (no
    # key) for its project and end user.
    key = principal.key_id or f"token:{project.id}:{principal.user or ''}"
    full = state.in_flight.enter(
        key, principal.org, limits.max_in_flight_per_key, limits.max_in_flight_per_org
    )
    if full is not None:
        state.metrics.rate_limited.labels(project.slug, full, "in_flight").inc()
        cap = limits.max_in_flight_per_key if full == "key" else limits.max_in_flight_per_org
        raise RateLimited.detail(
            f"too many requests in flight for this {'API key' if full == 'key' else 'org'} "
            f"({cap}, limits.max_in_flight_per_{full}); retry when one has finished",
            {"Retry-After": "1"},
        )
    try:
        return await handler(request)
    finally:
        state.in_flight.leave(key, principal.org)
