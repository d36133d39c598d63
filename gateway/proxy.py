"""The chat-completions route: parse, hold, forward, relay, settle.

Auth, request ids, access logs and errors are middlewares (they cross every route);
the rest reads top to bottom in :func:`chat_completions`: the pipeline's request step,
the budget hold, then the upstream call, answered once (unary) or relayed chunk by
chunk while the meter counts, and the settle as the hold is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.breaker import CircuitBreaker
from gateway.config import Config, Project, ProviderConfig, Route
from gateway.context import REQUEST_ID, REQUEST_STATE, CallContext, GatewayState
from gateway.errors import (
    GatewayError,
    ProviderKeyMissing,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from gateway.idle import IdleWatchdog
from gateway.params import UNDERSTOOD, forwarded_extras
from gateway.pipeline.hold import Hold
from gateway.pipeline.idempotency import Idempotency, idempotency_key
from gateway.pipeline.meter import StreamMeter, unary_billed, worst_case
from gateway.pipeline.request import chat_call
from gateway.providers.base import (
    Chunk,
    ChunkStream,
    Provider,
    Relayed,
    StreamEvent,
    UpstreamRequest,
    UpstreamStreamError,
)
from gateway.routing import backoff_seconds
from gateway.surfaces.base import Surface, SurfaceStream
from gateway.usage import Usage, generated_bytes
from gateway.wire import PROFILES, WireProfile

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# Rewritten below, whatever the client sent.
_GATEWAY_OWNED = frozenset({"max_tokens", "max_completion_tokens", "stream_options", "model"})
_FORWARDED = UNDERSTOOD - _GATEWAY_OWNED


def upstream_body(call: CallContext, provider: ProviderConfig) -> dict[str, Any]:
    """The client's body rewritten for the route: only what the gateway understands and
    the provider's allowed extras (gateway.params), the upstream model, the clamped max
    tokens, and usage always requested on streams."""
    sent = call.chat.body
    body = {k: v for k, v in sent.items() if k in _FORWARDED}
    if provider.extra_params:
        body.update(forwarded_extras(sent, provider.extra_params))
    body["model"] = call.route.model
    # Always the name the provider is configured to read, whichever the client used: a
    # server that ignores the other name (Ollama, llama.cpp ignore max_completion_tokens)
    # would otherwise generate past the reserved ceiling.
    body[provider.max_tokens_param] = call.output_ceiling // max(call.chat.n, 1)
    if call.chat.stream:
        body["stream_options"] = {
            **(call.chat.body.get("stream_options") or {}),
            "include_usage": True,
        }
    return body


def _provider_key(route: Route, call: CallContext) -> str:
    return provider_key(route, call.project, call.config)


def provider_key(route: Route, project: Project, config: Config) -> str:
    """The key sent to the route's provider: the project's own (BYOK) if it names one,
    else the provider's; "" for a provider that takes none (no ``api_key_env``). A named
    variable that is unset or empty is a ProviderKeyMissing (503), before anything is
    sent: an empty key would reach the provider and come back as a rejected key."""
    variable = project.file.provider_keys.get(route.provider)
    if not variable:
        variable = config.gateway.providers[route.provider].api_key_env
        if not variable:
            return ""
    key = config.secret(variable)
    if not key:
        raise ProviderKeyMissing(route.provider, variable)
    return key


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/projects/{ref}/chat/completions: parse, claim its idempotency key (if
    any), hold, forward and relay (the meter counts), settle (leaving the hold)."""
    call = await chat_call(request)
    return await run_call(request, call)


async def run_call(
    request: web.Request, call: CallContext, surface: Surface | None = None
) -> web.StreamResponse:
    """A planned call, as every spending route runs it: its idempotency key claimed (if
    any), held, forwarded and relayed, settled. ``surface`` writes the answer (None:
    chat completions, in the project's wire profile)."""
    key = idempotency_key(request)
    if key is None:
        return await _held(request, call, surface)
    async with Idempotency(request, call, key) as claim:
        if claim.replay is not None:
            return claim.replay  # answered before: not forwarded, not billed
        response = await _held(request, call, surface)
        await claim.completed(response)
        return response


async def _held(
    request: web.Request, call: CallContext, surface: Surface | None
) -> web.StreamResponse:
    """Hold the worst case, forward and relay, settle what the meter billed."""
    async with Hold(request, call) as hold:
        response = await _forward(request, call, hold, surface)
        hold.answered(response.status)
        return response


async def _forward(
    request: web.Request, call: CallContext, hold: Hold, surface: Surface | None
) -> web.StreamResponse:
    """Try the alias's targets in order: retry each with backoff, fall back to the next,
    skip those whose circuit is open, all only while nothing reached the client."""
    state = request[REQUEST_STATE]
    retries = call.config.gateway.resilience.retries
    last_error: GatewayError | None = None
    for route in call.targets:
        breaker = state.breaker(route, call.project)
        for attempt in range(1, retries.attempts_per_target + 1):
            if breaker.state(time.monotonic()) == "open":
                break
            if last_error is not None and not await hold.renew():
                # The budget hold could not be renewed for another attempt: none runs
                # without one (its room could go to another request meanwhile).
                raise last_error
            if route is not call.route:
                await hold.retarget(route)  # re-checks the cost caps (402)
            if not breaker.allow(time.monotonic()):  # takes a half-open probe
                break
            try:
                response = await _attempt(request, state, call, route, surface)
            except ProviderKeyMissing as exc:
                # Nothing was sent: not this target's health, and no reason not to try
                # the next target (its own provider's key).
                breaker.release_probe()
                last_error = exc
                break
            except GatewayError as exc:
                _judge(breaker, exc)
                if not exc.retryable:
                    raise
                last_error = exc
                if attempt == retries.attempts_per_target:
                    break
                hint = exc.upstream_retry_after if isinstance(exc, UpstreamRateLimited) else None
                wait = backoff_seconds(attempt, retries, state.rng, hint)
                if wait is None:
                    break
                state.metrics.upstream_retries.labels(route.provider).inc()
                await asyncio.sleep(wait)
                continue
            except BaseException:
                breaker.release_probe()  # cancelled (client gone): the probe proved nothing
                raise
            if call.stream_outcome == "upstream_error":
                # Failed after the first byte (relayed as the error event): the target is
                # no healthier than one failing before it, so it counts toward opening.
                breaker.failure(time.monotonic())
            else:
                breaker.success()
            return response
        if route is not call.targets[-1]:
            state.metrics.upstream_fallbacks.labels(route.provider).inc()
    if last_error is not None:
        raise last_error
    wait = min(state.breaker(r, call.project).retry_after(time.monotonic()) for r in call.targets)
    raise ServiceUnavailable.detail(
        "every upstream of this model is unavailable (circuit open)",
        {"Retry-After": str(max(1, math.ceil(wait)))},
    )


def _judge(breaker: CircuitBreaker, exc: GatewayError) -> None:
    """What an attempt's failure says about the target's health."""
    if isinstance(exc, UpstreamFailed | UpstreamTimeout):
        breaker.failure(time.monotonic())
    elif isinstance(exc, UpstreamRateLimited):
        breaker.release_probe()  # throttling, not failing: the breaker stays as it is
    else:
        breaker.success()  # the target answered (e.g. a 4xx about this request): healthy


async def _attempt(
    request: web.Request,
    state: GatewayState,
    call: CallContext,
    route: Route,
    surface: Surface | None,
) -> web.StreamResponse:
    provider = call.providers[route.provider]
    provider_config = call.provider_config(route.provider)
    per_choice = call.output_ceiling // max(call.chat.n, 1)
    native = (
        surface.native(provider_config, route.model, per_choice) if surface is not None else None
    )
    upstream = UpstreamRequest(
        body={},
        api_key=_provider_key(route, call),
        timeouts=provider_config.timeouts,
        request_id=request[REQUEST_ID],
    )
    if native is not None:  # same format: passed through, the surface reads the answer
        upstream.body, upstream.operation = native.body, native.operation
        upstream.extra_headers = native.headers
        upstream.native_stream, upstream.native_answer = native.stream, native.answer
    elif surface is None or surface.operation == "chat":
        upstream.body = upstream_body(call, provider_config)
    else:
        upstream.body, upstream.operation = surface.upstream_body(route.model), surface.operation
    gateway_id = "chatcmpl_" + request[REQUEST_ID]
    profile = PROFILES[call.project.file.wire_profile]
    if not call.chat.stream:
        writer = None if native is not None else surface
        return await _unary(state, call, provider, upstream, gateway_id, profile, writer)
    stream = surface.stream() if surface is not None and native is None else None
    return await _stream(
        request, state, call, provider, upstream, gateway_id, profile, stream,
        native.error if native is not None else None,
    )  # fmt: skip


async def _unary(
    state: GatewayState,
    call: CallContext,
    provider: Provider,
    upstream: UpstreamRequest,
    gateway_id: str,
    profile: WireProfile,
    surface: Surface | None,
) -> web.StreamResponse:
    name = provider.name
    started = time.perf_counter()
    task = asyncio.current_task()
    if task is not None:
        state.handlers.add(task)  # shutdown cancels these when the grace period ends
    try:
        completion, usage = await provider.complete(upstream)
    except GatewayError as exc:
        state.metrics.upstream_errors.labels(name, f"http_{exc.status}").inc()
        if exc.billable:
            # The provider may have done (a timeout after the request went out) or did (an
            # answer lost or unreadable after its 200) the whole job: bill the worst case,
            # and do not pay for it twice by retrying. A failure before the request was
            # sent (a connect timeout, a refused connection) is not billable: retried.
            call.add_billed(worst_case(call.input_bound, call.output_ceiling))
            reason = "timeout" if isinstance(exc, UpstreamTimeout) else "answer_lost"
            state.metrics.estimated_usage.labels(call.project.slug, reason).inc()
            exc.retryable = False
        raise
    except asyncio.CancelledError:
        # The client left, or the shutdown grace period ended, while the provider was
        # working: it may still bill us in full.
        call.add_billed(worst_case(call.input_bound, call.output_ceiling))
        if state.grace_over and task is not None:
            # Ours, not the client's: tell it why (the settle runs after this answer).
            task.uncancel()
            state.metrics.estimated_usage.labels(call.project.slug, "gateway_shutdown").inc()
            stopping = ServiceUnavailable.detail(
                "the gateway is shutting down; retry the request", {"Retry-After": "1"}
            )
            stopping.retryable = False
            raise stopping from None
        state.metrics.estimated_usage.labels(call.project.slug, "client_disconnected").inc()
        raise
    finally:
        if task is not None:
            state.handlers.discard(task)
        elapsed = time.perf_counter() - started
        call.upstream_seconds += elapsed
        state.metrics.upstream_duration.labels(name).observe(elapsed)
    if usage is None:
        state.metrics.estimated_usage.labels(call.project.slug, "no_usage").inc()
    usage = unary_billed(usage, call.input_bound, call.output_ceiling)
    call.add_billed(usage)
    if upstream.native_answer is not None:
        body = completion  # same format: the surface's answer translator made it the client's
    elif surface is not None:
        body = surface.unary(completion, usage)
    else:
        body = profile.unary(completion, gateway_id, call.alias, usage)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _stream(
    request: web.Request,
    state: GatewayState,
    call: CallContext,
    provider: Provider,
    upstream: UpstreamRequest,
    gateway_id: str,
    profile: WireProfile,
    encoder: SurfaceStream | None,
    native_error: Callable[[str, str], bytes] | None = None,
) -> web.StreamResponse:
    name = provider.name
    started = time.perf_counter()
    try:
        stream: ChunkStream = await provider.open_stream(upstream)
    except asyncio.CancelledError:
        # The client left after the request went out: the provider may be generating.
        call.add_billed(worst_case(call.input_bound, call.output_ceiling))
        state.metrics.estimated_usage.labels(call.project.slug, "client_disconnected").inc()
        raise
    except GatewayError as exc:
        # Before any byte: nothing was generated that we could see or the provider bills
        # (a first-byte timeout on a stream means the request was not even accepted).
        call.upstream_seconds += time.perf_counter() - started
        state.metrics.upstream_errors.labels(name, f"http_{exc.status}").inc()
        raise
    relay = _Relay(call, gateway_id, profile, encoder, native_error)
    batches = stream.batches()
    response: web.StreamResponse | None = None
    metrics = state.metrics
    try:
        # Nothing reaches the client before the first upstream chunk: failures up to
        # here are still plain HTTP errors, and may be retried.
        deferred: UpstreamStreamError | None = None
        try:
            # first_byte bounds the first token, not only the response headers: one
            # deadline, set when the request was sent, bounds both.
            deadline = stream.first_byte_deadline
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + upstream.timeouts.first_byte
            async with asyncio.timeout_at(deadline):
                first = await anext(batches)
        except TimeoutError as exc:
            call.upstream_seconds += time.perf_counter() - started
            metrics.upstream_errors.labels(name, "upstream_timeout").inc()
            # The provider accepted the request (headers came) and may be generating:
            # it is billed at the worst case (below), so it is not retried.
            timed_out = UpstreamTimeout.detail(f"provider {name} timed out")
            timed_out.retryable = False
            raise timed_out from exc
        except (UpstreamStreamError, StopAsyncIteration) as exc:
            if isinstance(exc, UpstreamStreamError) and exc.pending:
                # Chunks arrived together with the failure: relay them, then the error.
                first, deferred, exc.pending = exc.pending, exc, []
            else:
                call.upstream_seconds += time.perf_counter() - started
                code = exc.code if isinstance(exc, UpstreamStreamError) else "stream_error"
                metrics.upstream_errors.labels(name, code).inc()
                relay.meter.declined = isinstance(exc, UpstreamStreamError) and exc.declared
                failed: GatewayError
                if code == "upstream_timeout":
                    failed = UpstreamTimeout.detail(f"provider {name} timed out")
                else:
                    failed = UpstreamFailed.detail(f"provider {name} failed before the first byte")
                # A provider that refused (error frame) billed nothing: retry. One cut after
                # its 200 may have generated: that attempt is billed (relay), not retried.
                failed.retryable = relay.meter.declined
                raise failed from exc
        call.upstream_seconds += time.perf_counter() - started
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        relay.watch(request, upstream.timeouts.idle)
        metrics.open_streams.inc()
        task = asyncio.current_task()
        if task is not None:
            state.handlers.add(task)  # shutdown cancels these when the grace period ends
        outcome = "completed"
        try:
            await relay.write(response, first)
            if deferred is not None:
                raise deferred
            while True:
                waited = time.perf_counter()
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    break
                finally:
                    call.upstream_seconds += time.perf_counter() - waited
                await relay.write(response, batch)
            await relay.send(response, relay.trailer())
            # The client has the whole stream: a disconnect from here on (while the
            # hold settles) is no 499.
            call.stream_outcome = "completed"
        except UpstreamStreamError as exc:
            outcome = "upstream_error"
            metrics.upstream_errors.labels(name, exc.code).inc()
            error = relay.error_event(exc.code, name, exc.message)
            await _write_quietly(relay, response, relay.encode(exc.pending) + error)
        except (ConnectionResetError, ConnectionError):
            outcome = "client_disconnected"
        except asyncio.CancelledError:
            if not state.ready:
                # Shutdown grace period over: tell the client why the stream ends.
                call.stream_outcome = "gateway_shutdown"
                message = "the gateway is shutting down; retry the request"
                await _write_quietly(
                    relay, response, relay.error_event("gateway_shutdown", name, message)
                )
            else:
                # handler_cancellation: the client went away while we waited on the upstream.
                call.stream_outcome = "client_disconnected"
            raise
        finally:
            relay.unwatch()
            metrics.open_streams.dec()
            if task is not None:
                state.handlers.discard(task)
        call.stream_outcome = outcome
        return response
    finally:
        await stream.aclose()
        metrics.upstream_duration.labels(name).observe(time.perf_counter() - started)
        billed = relay.billed(state, call)
        if billed is not None:
            call.add_billed(billed)
        if call.first_token_at is not None:
            metrics.time_to_first_token.labels(call.project.slug).observe(
                call.first_token_at - call.started
            )


async def _write_quietly(relay: _Relay, response: web.StreamResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionResetError, ConnectionError):
        await relay.send(response, data)


class _Relay:
    """Re-stamps chunks for the client, feeds the meter what was produced and the usage
    reported (gateway.meter decides what is billed)."""

    def __init__(
        self,
        call: CallContext,
        gateway_id: str,
        profile: WireProfile,
        encoder: SurfaceStream | None = None,
        native_error: Callable[[str, str], bytes] | None = None,
    ) -> None:
        self.call = call
        # A same-format stream (its bytes relayed as they are): how it says a failure.
        self.native_error = native_error
        # A surface's events instead of chat chunks (None: chat, in the wire profile);
        # its opening events go out with the first write.
        self.encoder = encoder
        self._opening = encoder.start() if encoder is not None else b""
        self.gateway_id = gateway_id
        self.profile = profile
        self.meter = StreamMeter(call.input_bound, call.output_ceiling, call.chat.n)
        self._watchdog: IdleWatchdog | None = None  # bounds each client write (watch())
        self.stalled = False  # the client accepted nothing for the idle timeout
        self.created = int(time.time())
        # The profile's framing of one chunk, split around the JSON (one concatenation
        # per chunk instead of two method calls).
        self._head, _, self._tail = profile.frame(b"\x00").partition(b"\x00")

    def watch(self, request: web.Request, idle: float) -> None:
        """Bound every client write by ``idle`` seconds: a client that accepts nothing
        for that long (zero window) would otherwise hold the stream, its upstream
        connection and its budget hold for ever. Its connection is then dropped, and
        the stream ends as for a client that left."""
        transport = request.transport

        def stall() -> None:
            self.stalled = True
            if transport is not None:
                # Wakes the pending write, and cancels the handler (handler_cancellation).
                transport.abort()

        self._watchdog = IdleWatchdog(idle, stall)

    def unwatch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    async def send(self, response: web.StreamResponse, data: bytes) -> None:
        """One client write, bounded by the idle timeout (see watch())."""
        if self._opening:
            data, self._opening = self._opening + data, b""
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.begin()
        await response.write(data)
        if watchdog is not None:
            watchdog.end()
        if self.stalled:
            raise ConnectionResetError("the client accepted nothing for the idle timeout")

    async def write(self, response: web.StreamResponse, batch: list[StreamEvent]) -> None:
        """Relay one upstream read's chunks in a single write; past the output ceiling,
        what came before it, then the stream ends (UpstreamStreamError output_limit)."""
        data = self.encode(batch)
        if data:
            await self.send(response, data)
        if self.meter.over_ceiling:
            raise UpstreamStreamError(
                "output_limit",
                f"the provider produced more than the {self.call.output_ceiling} output "
                "tokens reserved for this request; the answer was cut there",
            )

    def encode(self, batch: list[StreamEvent]) -> bytes:
        frames = []
        meter = self.meter
        for event in batch:
            if meter.over_ceiling:
                break  # nothing past the reserved output reaches the client
            if isinstance(event, dict):
                frame = self._frame(event, None)
            elif isinstance(event, tuple):
                frame = self._frame(*event)  # a chunk and the usage it came with
            elif isinstance(event, Relayed):
                frame = self._relayed(event)
            else:
                meter.report(event)  # a usage on its own: kept, re-emitted at the end
                continue
            if frame is not None:
                frames.append(frame)
        return b"".join(frames)

    def _relayed(self, event: Relayed) -> bytes | None:
        """A same-format stream's bytes: relayed as they are, once the meter counted them."""
        meter = self.meter
        for _ in range(event.deltas):
            meter.produced()
        if event.deltas and self.call.first_token_at is None:
            self.call.first_token_at = time.perf_counter()
        if event.finished:
            meter.finish(0)
        if event.usage is not None and (event.usage_final or not event.finished):
            meter.report(event.usage)  # a running count stays a floor until the final one
        if meter.over_ceiling:
            return None
        return event.data or None

    def _frame(self, chunk: Chunk, usage: Usage | None) -> bytes | None:
        meter = self.meter
        choices = chunk.get("choices")
        if choices:
            for choice in choices:
                # Every generated field is produced output (content, refusal, reasoning,
                # tool-call arguments, non-standard ones), the role is not.
                if generated_bytes(choice.get("delta")):
                    meter.produced()
                    if self.call.first_token_at is None:
                        self.call.first_token_at = time.perf_counter()
                if choice.get("finish_reason"):
                    meter.finish(choice.get("index", 0))
        if usage is not None:
            meter.report(usage)
        if meter.over_ceiling:
            return None  # past what was reserved (the upstream ignored the clamp): not relayed
        chunk["id"] = self.gateway_id
        chunk["object"] = "chat.completion.chunk"
        chunk["model"] = self.call.alias
        self.created = chunk.setdefault("created", self.created)
        if self.encoder is not None:
            return self.encoder.feed(chunk) or None
        return self._head + orjson.dumps(chunk) + self._tail

    def error_event(self, code: str, provider: str, message: str) -> bytes:
        """A failure after the first byte, as the client's format says it."""
        if self.native_error is not None:
            return self.native_error(code, message)
        if self.encoder is not None:
            return self.encoder.fail(code, message)
        return self.profile.error_event(code, provider, message)

    def trailer(self) -> bytes:
        if self.native_error is not None:
            return b""  # a same-format stream's end events were relayed as they came
        if self.encoder is not None:
            return self.encoder.finish(self.meter.usage())
        out = b""
        if self.call.chat.include_usage:
            usage = self.meter.usage()
            out = self.profile.usage_chunk(self.gateway_id, self.created, self.call.alias, usage)
        return out + self.profile.done()

    def billed(self, state: GatewayState, call: CallContext) -> Usage | None:
        usage, reason = self.meter.billed()
        if reason is not None:
            state.metrics.estimated_usage.labels(call.project.slug, reason).inc()
        return usage
