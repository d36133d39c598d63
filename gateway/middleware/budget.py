"""Budget: reserve the worst case before the handler, settle what was used after it.

aiohttp returns from a streaming handler only when the stream is finished, so
the settlement here sees the usage the relay recorded, also when the client left
or the upstream failed. Settling is shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

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
        # The reservation id is ours, never the client's X-Request-Id: ids must not collide.
        call.reservation = await state.store.reserve(
            call.project.id, uuid.uuid4().hex, counters, worst
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


SETTLE_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


async def _settle(state: GatewayState, call: CallContext, request_id: str) -> None:
    billed = call.billed or Usage()
    _count(state, call, billed)
    if call.reservation is None:
        return
    actual = amounts_for(billed, call)
    try:
        await state.store.settle(call.reservation, actual)
    except StoreUnavailable:
        state.metrics.store_errors.labels("settle").inc()
        # Settling is idempotent, so retry in the background rather than hold the answer.
        task = asyncio.create_task(_settle_later(state, call, actual, request_id))
        state.background.add(task)
        task.add_done_callback(state.background.discard)


async def _settle_later(
    state: GatewayState, call: CallContext, actual: Amounts, request_id: str
) -> None:
    assert call.reservation is not None
    for delay in SETTLE_RETRY_DELAYS:
        await asyncio.sleep(delay)
        try:
            await state.store.settle(call.reservation, actual)
            return
        except StoreUnavailable:
            state.metrics.store_errors.labels("settle").inc()
    # Still down: the hold releases at its expiry; log what to reconcile (no secrets here).
    log.error(
        "settle failed; usage not recorded",
        extra={
            "request_id": request_id,
            "project": call.project.slug,
            "input_tokens": actual.input_tokens,
            "output_tokens": actual.output_tokens,
            "cost_nano_usd": actual.cost_nano,
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
