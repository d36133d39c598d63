"""The hold step of the pipeline: reserve the worst case before forwarding, settle
what the meter billed on the way out.

Steps: the org's caps (own hash tag, only when the org has caps), then the
project's counters, its key and end-user sub-caps and its rate limits in one
script. A refused later step releases the earlier one, so nothing leaks.

The handler leaves the hold only when its answer is finished (a stream included),
so the settlement sees the usage the meter recorded, also when the client left or
the upstream failed. Settling is shielded from cancellation, idempotent, and
retried in the background if the store does not answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from gateway.budget import (
    Amounts,
    BudgetExceeded,
    Counter,
    RateLimit,
    RateLimitExceeded,
    Refusal,
    Reservation,
    StoreUnavailable,
    fitting_output,
    org_counters,
    project_counters,
    project_rate_limits,
)
from gateway.budget.store import Shrink
from gateway.config import Route, org_caps
from gateway.context import (
    CLIENT_REQUEST_ID,
    PRINCIPAL,
    PROJECT,
    REQUEST_ID,
    REQUEST_STATE,
    CallContext,
    GatewayState,
    Principal,
)
from gateway.errors import BudgetExhausted, GatewayError, RateLimited, ServiceUnavailable
from gateway.ids import new_id
from gateway.pipeline.headroom import HEADERS, budget_headers
from gateway.usage import Usage, cost_nano, dearest_input_price, worst_cost_nano

log = logging.getLogger("gateway.budget")
# Pauses between attempts at a settle (or release) the store did not answer: quick at
# first, then every SETTLE_RETRY_EVERY seconds for as long as the hold would still be
# held (the reservation TTL). A Redis failover or restart shorter than that loses no
# usage; the hold keeps the budget meanwhile, so waiting longer costs nothing more.
SETTLE_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
SETTLE_RETRY_EVERY = 5.0


async def retry_until_done(window_s: float, attempt: Callable[[], Awaitable[bool]]) -> bool:
    """Call ``attempt`` after each pause until it returns True or ``window_s`` has
    passed; whether it succeeded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window_s
    delays = itertools.chain(SETTLE_RETRY_DELAYS, itertools.repeat(SETTLE_RETRY_EVERY))
    for delay in delays:
        if loop.time() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        if await attempt():
            return True
    return False  # unreachable: the delays never run out


def amounts_for(usage: Usage, call: CallContext) -> Amounts:
    return Amounts(usage.input_tokens, usage.output_tokens, cost_nano(usage, call.price))


def _fit(refusal: Refusal, call: CallContext) -> int | None:
    """The max_tokens that would let this refused request fit now, for the 402."""
    price = call.price.output if call.price is not None else None
    return fitting_output(refusal, call.output_ceiling, price)


def worst_amounts(call: CallContext) -> Amounts:
    """What a request may consume at most: the reservation."""
    cost = worst_cost_nano(call.input_bound, call.output_ceiling, call.price)
    return Amounts(call.input_bound, call.output_ceiling, cost)


class Hold:
    """A request's budget hold, owned by its handler::

        async with Hold(request, call) as hold:
            ...  # hold.renew() before another attempt, hold.retarget(route) to fall back
            hold.answered(response.status)

    Entering reserves the call's worst case on every counter (402 / 429 / 503 when
    refused). Leaving settles what the call was billed (``call.billed``, decided by the
    meter), exactly once, on every way out (return, exception, cancellation, shutdown):
    shielded and tracked, so shutdown waits for it before closing the store."""

    def __init__(self, request: web.Request, call: CallContext) -> None:
        self.request = request
        self.state = request[REQUEST_STATE]
        self.principal = request[PRINCIPAL]
        self.request_id = request[REQUEST_ID]
        self.client_request_id = request.get(CLIENT_REQUEST_ID) or None
        self.call = call
        self.status = 500  # the answer's status, for the ledger (answered())

    async def __aenter__(self) -> Hold:
        state, call = self.state, self.call
        try:
            await _reserve(state, call, self.principal, self.request_id)
            self._tell_room()
        except StoreUnavailable as exc:
            state.metrics.store_errors.labels("reserve").inc()
            _release_later(state, exc.maybe_held, self.request_id)
            if state.config.gateway.redis.on_store_error == "deny":
                raise ServiceUnavailable.detail(
                    "budget store unavailable", {"Retry-After": "1"}
                ) from None
            state.metrics.unmetered.labels(call.project.slug).inc()
            log.warning(
                "admitted unmetered: budget store unavailable",
                extra={"request_id": self.request_id, "project": call.project.slug},
            )
        return self

    def _tell_room(self) -> None:
        """What is left once this request is held, as headers on its answer."""
        held = self.call.reservation
        if held is None or held.room is None:
            return
        rooms = [held.room]
        org = self.call.org_reservation
        if org is not None and org.room is not None:
            rooms.append(org.room)
        headers = budget_headers(rooms, held.rate_limits)
        if self.call.shrunk:
            # Shrunk to fit: the max tokens the answer was given (a choice).
            per_choice = self.call.output_ceiling // max(self.call.chat.n, 1)
            headers["X-Budget-Shrunk-Max-Tokens"] = str(per_choice)
        self.request[HEADERS] = headers

    def answered(self, status: int) -> None:
        """The status the client got (the ledger records it)."""
        self.status = status

    async def renew(self) -> bool:
        """Before another attempt: push every hold to a full ttl from now; False if one
        is gone or the store did not answer (no attempt runs without its hold)."""
        return await _renew(self.state, self.call)

    async def retarget(self, route: Route) -> None:
        """Fall back to another target: the hold follows its price (a pricier model
        holds the difference too, or 402)."""
        await _rebudget(self.state, self.call, self.principal, route, self.request_id)
        self.call.route = route

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        call, state = self.call, self.state
        if isinstance(exc, GatewayError):
            self.status = exc.status
        elif isinstance(exc, asyncio.CancelledError):
            # A stream the client read to the end and then closed was answered (observe
            # records the same status).
            self.status = 200 if call.stream_outcome == "completed" else 499
        elif exc is not None:
            self.status = 500
        outcome = _Outcome(self.request_id, self.principal, self.status, self.client_request_id)
        # Shielded and tracked: a cancelled handler (client gone, shutdown) still settles,
        # and shutdown waits for it before closing the store.
        settle = asyncio.create_task(_settle(state, call, outcome))
        state.background.add(settle)
        settle.add_done_callback(state.background.discard)
        await asyncio.shield(settle)


def _hold_event(
    call: CallContext, principal: Principal, request_id: str, hold: str
) -> dict[str, Any]:
    """What the ledger says of a hold if it expires unsettled (its gateway died): the
    script adds the amounts it charges, the expiry and the reason."""
    return {
        "request_id": request_id,
        "org": call.project.org,
        "project": call.project.slug,
        "project_id": call.project.id,
        "key_id": principal.key_id,
        "user": principal.user,
        "model": call.alias,
        "provider": call.route.provider,
        "upstream_model": call.route.model,
        "stream": call.chat.stream,
        "hold": hold,  # "project" | "org" | "fallback" (a fallback's extra cost)
    }


async def _reserve(
    state: GatewayState, call: CallContext, principal: Principal, request_id: str
) -> None:
    project = call.project
    worst = worst_amounts(call)
    org = call.config.gateway.orgs.get(project.org)
    counters = org_counters(org_caps(org)) if org is not None else []
    try:
        if counters:
            event = _hold_event(call, principal, request_id, "org")
            call.org_reservation = await _hold(
                state, project.org, counters, worst, event, kind="org", shrink=_shrink(call)
            )
            _follow_shrink(call, call.org_reservation)
            worst = worst_amounts(call)
        call.reservation = await _hold(
            state,
            project.id,
            project_counters(project, principal.key_id, principal.user),
            worst,
            _hold_event(call, principal, request_id, "project"),
            rate_limits=project_rate_limits(project, principal.key_id),
            shrink=_shrink(call),
        )
        _follow_shrink(call, call.reservation)
    except asyncio.CancelledError:
        if call.org_reservation is not None:  # held already: the project step was cut
            _release_later(state, call.org_reservation, "")
        raise
    except BudgetExceeded as exc:
        await _undo_org_step(state, call)
        r = exc.refusal
        state.metrics.budget_rejections.labels(project.slug, r.scope, r.window, r.dimension).inc()
        raise BudgetExhausted.refused(r, _fit(r, call)) from None
    except RateLimitExceeded as exc:
        await _undo_org_step(state, call)
        raise _rate_limited(state, project.slug, exc) from None
    except StoreUnavailable:
        await _undo_org_step(state, call)
        raise


def _shrink(call: CallContext) -> Shrink | None:
    """The project's shrink-to-fit, for this call's input bound and price (None: off)."""
    opted = call.project.file.shrink_to_fit
    if opted is None:
        return None
    price = call.price
    return Shrink(
        min_output=opted.min_output_tokens,
        choices=max(call.chat.n, 1),
        input_cost=call.input_bound * dearest_input_price(price) if price is not None else 0,
        output_price=price.output if price is not None else 0,
    )


def _follow_shrink(call: CallContext, held: Reservation) -> None:
    """A hold that shrank the output: the call's ceiling (what goes upstream as the max
    tokens, what the meter cuts at) is what was held."""
    if held.amounts.output_tokens < call.output_ceiling:
        call.output_ceiling = held.amounts.output_tokens
        call.shrunk = True


def _rate_limited(state: GatewayState, slug: str, exc: RateLimitExceeded) -> RateLimited:
    """The 429 of a rate limit the request exceeded (counted)."""
    limit = exc.limit
    kind = "tokens" if limit.per_token else "requests"
    state.metrics.rate_limited.labels(slug, limit.scope, kind).inc()
    scope = "per-key " if limit.scope == "key" else ""
    if exc.retry_after_ms is None:
        # No Retry-After: waiting can never admit this request, a smaller one can.
        return RateLimited.detail(
            f"this request's worst case ({exc.requested} tokens) exceeds the {scope}"
            f"tokens per minute limit ({limit.per_minute}) by itself: lower max_tokens "
            "or shorten the input"
        )
    retry_after = str(max(1, -(-exc.retry_after_ms // 1000)))
    return RateLimited.detail(
        f"{scope}{kind} per minute limit ({limit.per_minute}) reached",
        {"Retry-After": retry_after},
    )


async def charge_requests(request: web.Request) -> None:
    """A request that spends nothing but counts against the project's (and the key's)
    requests-per-minute limits (count_tokens): 429 past them; nothing is held."""
    state, project = request[REQUEST_STATE], request[PROJECT]
    principal = request[PRINCIPAL]
    limits = [r for r in project_rate_limits(project, principal.key_id) if not r.per_token]
    if not limits:
        return
    none = Amounts(0, 0, 0)
    try:
        held = await state.store.reserve(project.id, new_id(), [], none, rate_limits=limits)
        await state.store.settle(held, none, ledger=None, ledger_max_events=0)
    except RateLimitExceeded as exc:
        raise _rate_limited(state, project.slug, exc) from None
    except StoreUnavailable:
        state.metrics.store_errors.labels("reserve").inc()
        raise ServiceUnavailable.detail("budget store unavailable", {"Retry-After": "1"}) from None


async def _hold(
    state: GatewayState,
    owner: str,
    counters: list[Counter],
    amounts: Amounts,
    event: dict[str, Any],
    *,
    kind: str = "prj",
    rate_limits: Sequence[RateLimit] = (),
    shrink: Shrink | None = None,
) -> Reservation:
    """``store.reserve`` under a new id of ours (never the client's X-Request-Id: ids must
    not collide). If the client leaves (the handler is cancelled) while the store is
    answering, the reserve may still run and would hold until its ttl: what it holds is
    given back once the store answers (a reserve arriving after that release is
    refused by the script)."""
    reservation_id = new_id()
    try:
        return await state.store.reserve(
            owner,
            reservation_id,
            counters,
            amounts,
            kind=kind,
            rate_limits=rate_limits,
            event=event,
            ledger_max_events=state.config.gateway.ledger.max_events,
            shrink=shrink,
        )
    except asyncio.CancelledError:
        tag = state.store.tag(owner, kind)
        _release_later(state, Reservation(reservation_id, tag, (), amounts, tuple(rate_limits)), "")
        raise


async def _rebudget(
    state: GatewayState, call: CallContext, principal: Principal, route: Route, request_id: str
) -> None:
    """Before a fallback to another model: if its worst case costs more than what is
    held, hold the difference too, on the project's and the org's counters (402 if a
    cost cap has no room for it). Token amounts do not change with the model. The
    extra holds are released when the request settles (its usage is charged once)."""
    price = call.config.gateway.prices.get(route.model)
    call.price = price
    if call.reservation is None:
        return  # admitted unmetered
    # What the project's counters hold for this request. Each earlier fallback added a hold
    # on the project and, with org caps, the same one on the org: count one scope only.
    tag = call.reservation.project_tag
    held = call.reservation.amounts.cost_nano + sum(
        r.amounts.cost_nano for r in call.extra_holds if r.project_tag == tag
    )
    extra = worst_amounts(call).cost_nano - held
    if extra <= 0:
        return
    delta = Amounts(0, 0, extra)
    project = call.project
    steps: list[tuple[str, str, list[Counter]]] = [
        ("prj", project.id, project_counters(project, principal.key_id, principal.user))
    ]
    org = call.config.gateway.orgs.get(project.org)
    if call.org_reservation is not None and org is not None:
        steps.insert(0, ("org", project.org, org_counters(org_caps(org))))
    event = _hold_event(call, principal, request_id, "fallback")
    event.update(provider=route.provider, upstream_model=route.model)  # the fallback's
    try:
        for kind, owner, counters in steps:
            call.extra_holds.append(await _hold(state, owner, counters, delta, event, kind=kind))
    except BudgetExceeded as exc:
        # Report it as the new model's whole worst case against what others hold.
        r = dataclasses.replace(
            exc.refusal, reserved=max(exc.refusal.reserved - held, 0), requested=held + extra
        )
        state.metrics.budget_rejections.labels(project.slug, r.scope, r.window, r.dimension).inc()
        raise BudgetExhausted.refused(r, _fit(r, call)) from None
    except StoreUnavailable as exc:
        state.metrics.store_errors.labels("reserve").inc()
        _release_later(state, exc.maybe_held, "")
        raise ServiceUnavailable.detail("budget store unavailable", {"Retry-After": "1"}) from None


async def _renew(state: GatewayState, call: CallContext) -> bool:
    """Push every hold of the request (project, org, fallback differences) to a full ttl
    from now. Each attempt is shorter than the ttl (checked at config load), so a
    request renewed before each attempt never outlives its hold."""
    holds = (call.reservation, call.org_reservation, *call.extra_holds)
    try:
        for hold in holds:
            if hold is not None and not await state.store.extend(hold):
                log.warning("a reservation expired before its request ended; not retrying")
                return False
    except StoreUnavailable:
        state.metrics.store_errors.labels("extend").inc()
        return False
    return True


def _release_later(state: GatewayState, reservation: Reservation | None, request_id: str) -> None:
    """A reserve call that timed out may have run anyway: give its hold back (with any
    rate-limit charge) once the store answers. The reserve script refuses a reservation
    given up this way, so the release cannot come too early."""
    if reservation is None:
        return

    async def attempt() -> bool:
        try:
            await state.store.release(
                reservation,
                refund_rate_limits=True,
                ledger_max_events=state.config.gateway.ledger.max_events,
            )
        except StoreUnavailable:
            return False
        return True

    async def release() -> None:
        if await attempt() or await retry_until_done(state.store.reservation_ttl_s, attempt):
            return
        log.warning(
            "could not release a timed-out reservation; it expires by itself",
            extra={"request_id": request_id},
        )

    task = asyncio.create_task(release())
    state.background.add(task)
    task.add_done_callback(state.background.discard)


async def _undo_org_step(state: GatewayState, call: CallContext) -> None:
    if call.org_reservation is None:
        return
    try:
        await state.store.release(
            call.org_reservation, ledger_max_events=state.config.gateway.ledger.max_events
        )
    except StoreUnavailable:
        state.metrics.store_errors.labels("release").inc()  # expires by itself
    except asyncio.CancelledError:  # the client left: release it in the background
        _release_later(state, call.org_reservation, "")
        call.org_reservation = None
        raise
    call.org_reservation = None


class _Outcome:
    __slots__ = ("client_request_id", "finished_at", "principal", "request_id", "status")

    def __init__(
        self,
        request_id: str,
        principal: Principal,
        status: int,
        client_request_id: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.principal = principal
        self.status = status
        self.finished_at = time.time()


def _ledger_event(
    call: CallContext, outcome: _Outcome, billed: Usage, actual: Amounts
) -> dict[str, Any]:
    """The usage event of one admitted request (one per request, written by the settle)."""
    p = outcome.principal
    return {
        "request_id": outcome.request_id,
        "client_request_id": outcome.client_request_id,
        "ts": round(outcome.finished_at, 3),
        "org": call.project.org,
        "project": call.project.slug,
        "project_id": call.project.id,
        "key_id": p.key_id,
        "user": p.user,
        "model": call.alias,
        "provider": call.route.provider,
        "upstream_model": call.route.model,
        "status": outcome.status,
        "stream": call.chat.stream,
        "surface": call.surface,
        "outcome": call.stream_outcome,
        "input_tokens": billed.input_tokens,
        "output_tokens": billed.output_tokens,
        "cached_input_tokens": billed.cached_input_tokens,
        "cache_creation_input_tokens": billed.cache_creation_input_tokens,
        "cache_creation_1h_input_tokens": billed.cache_creation_1h_input_tokens,
        "reasoning_tokens": billed.reasoning_tokens,
        "cost_nano_usd": actual.cost_nano,
        "estimated": billed.estimated,
        "duration_ms": round((time.perf_counter() - call.started) * 1000, 1),
        "upstream_ms": round(call.upstream_seconds * 1000, 1),
    }


async def _settle(state: GatewayState, call: CallContext, outcome: _Outcome) -> None:
    billed = call.billed or Usage()
    _count(state, call, billed)
    actual = amounts_for(billed, call)
    ledger = _ledger_event(call, outcome, billed, actual)
    await _settle_one(state, call.reservation, actual, outcome.request_id, ledger)
    await _settle_one(state, call.org_reservation, actual, outcome.request_id, None)
    for hold in call.extra_holds:  # fallback cost differences: released, never charged
        await _settle_one(state, hold, Amounts(0, 0, 0), outcome.request_id, None)


async def _settle_one(
    state: GatewayState,
    reservation: Reservation | None,
    actual: Amounts,
    request_id: str,
    ledger: dict[str, Any] | None,
) -> None:
    if reservation is None:
        return
    max_events = state.config.gateway.ledger.max_events
    try:
        await state.store.settle(reservation, actual, ledger=ledger, ledger_max_events=max_events)
    except StoreUnavailable:
        state.metrics.store_errors.labels("settle").inc()
        # Settling is idempotent, so retry in the background rather than hold the answer.
        task = asyncio.create_task(_settle_later(state, reservation, actual, request_id, ledger))
        state.background.add(task)
        task.add_done_callback(state.background.discard)


async def _settle_later(
    state: GatewayState,
    reservation: Reservation,
    actual: Amounts,
    request_id: str,
    ledger: dict[str, Any] | None,
) -> None:
    max_events = state.config.gateway.ledger.max_events

    async def attempt() -> bool:
        try:
            await state.store.settle(
                reservation, actual, ledger=ledger, ledger_max_events=max_events
            )
        except StoreUnavailable:
            state.metrics.store_errors.labels("settle").inc()
            return False
        return True

    try:
        if await retry_until_done(state.store.reservation_ttl_s, attempt):
            return
    except asyncio.CancelledError:
        _usage_lost(request_id, actual)  # shutdown came first: say what to reconcile
        raise
    # Still down: the hold released at its expiry; log what to reconcile.
    _usage_lost(request_id, actual)


def _usage_lost(request_id: str, actual: Amounts) -> None:
    log.error(
        "settle failed; usage not recorded",
        extra={
            "request_id": request_id,
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
    m.cost.labels(slug, alias).inc(cost_nano(billed, call.price) / 1e9)
