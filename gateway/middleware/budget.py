"""Budget: reserve the worst case before the handler, settle what was used after it.

aiohttp returns from a streaming handler only when the stream is finished, so
the settlement here sees the usage the relay recorded, also when the client left
or the upstream failed. Settling is shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.budget import Amounts, BudgetExceeded, StoreUnavailable, project_counters
from gateway.context import CALL, PRINCIPAL, REQUEST_ID, STATE, CallContext, GatewayState
from gateway.errors import BudgetExhausted, ServiceUnavailable
from gateway.usage import Usage, cost_nano

log = logging.getLogger("gateway.budget")


def amounts_for(usage: Usage, call: CallContext) -> Amounts:
    return Amounts(usage.input_tokens, usage.output_tokens, cost_nano(usage, call.price))


@web.middleware
async def budget_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    call = request.get(CALL)
    if call is None:
        return await handler(request)
    state = request.config_dict[STATE]
    principal = request[PRINCIPAL]
    worst = amounts_for(Usage(call.input_bound, call.output_ceiling), call)
    counters = project_counters(call.project, principal.key_id, principal.user)
    try:
        call.reservation = await state.store.reserve(
            call.project.id, request[REQUEST_ID], counters, worst
        )
    except BudgetExceeded as exc:
        r = exc.refusal
        state.metrics.budget_rejections.labels(
            call.project.slug, r.scope, r.window, r.dimension
        ).inc()
        raise BudgetExhausted(r.body()) from None
    except StoreUnavailable:
        state.metrics.store_errors.labels("reserve").inc()
        if state.config.gateway.redis.on_store_error == "deny":
            raise ServiceUnavailable.detail(
                "budget store unavailable", {"Retry-After": "1"}
            ) from None
        state.metrics.unmetered.labels(call.project.slug).inc()
        log.warning("admitted unmetered", extra={"request_id": request[REQUEST_ID]})
    try:
        return await handler(request)
    finally:
        await asyncio.shield(_settle(state, call, request[REQUEST_ID]))


async def _settle(state: GatewayState, call: CallContext, request_id: str) -> None:
    billed = call.billed or Usage()
    _count(state, call, billed)
    if call.reservation is None:
        return
    try:
        await state.store.settle(call.reservation, amounts_for(billed, call))
    except StoreUnavailable:
        # The reservation stays held until it expires; the usage is logged for reconciliation.
        state.metrics.store_errors.labels("settle").inc()
        log.error(
            "settle failed",
            extra={
                "request_id": request_id,
                "input_tokens": billed.input_tokens,
                "output_tokens": billed.output_tokens,
            },
        )


def _count(state: GatewayState, call: CallContext, billed: Usage) -> None:
    if call.billed is None:
        return
    m = state.metrics
    slug, alias = call.project.slug, call.alias
    m.tokens.labels(slug, alias, "input").inc(billed.input_tokens)
    m.tokens.labels(slug, alias, "output").inc(billed.output_tokens)
    if billed.cached_input_tokens:
        m.tokens.labels(slug, alias, "cached_input").inc(billed.cached_input_tokens)
    if billed.reasoning_tokens:
        m.tokens.labels(slug, alias, "reasoning").inc(billed.reasoning_tokens)
    m.cost.labels(slug, alias).inc(cost_nano(billed, call.price))
