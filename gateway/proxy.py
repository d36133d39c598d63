"""The chat-completions handler: route, forward, relay.

Everything before it (auth, validation, reservation) is middleware; everything
here reads top to bottom: build the upstream request, call the provider, then
either answer once (unary) or relay the stream chunk by chunk, recording on the
call context what to bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.breaker import CircuitBreaker
from gateway.config import Route
from gateway.context import CALL, REQUEST_ID, REQUEST_STATE, CallContext, GatewayState
from gateway.errors import (
    GatewayError,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from gateway.providers.base import ChunkStream, Provider, UpstreamRequest, UpstreamStreamError
from gateway.routing import backoff_seconds
from gateway.usage import Usage, estimate, from_openai
from gateway.wire import PROFILES, WireProfile

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_GATEWAY_OWNED = ("max_tokens", "max_completion_tokens", "stream_options", "model")


def upstream_body(call: CallContext, max_tokens_param: str) -> dict[str, Any]:
    """The client's body rewritten for the route: upstream model, clamped max tokens,
    usage always requested on streams."""
    body = {k: v for k, v in call.chat.body.items() if k not in _GATEWAY_OWNED}
    body["model"] = call.route.model
    # Keep the client's own parameter name (servers differ); default to the provider's.
    asked = "max_tokens" if "max_tokens" in call.chat.body else None
    if "max_completion_tokens" in call.chat.body:
        asked = "max_completion_tokens"
    body[asked or max_tokens_param] = call.output_ceiling // max(call.chat.n, 1)
    if call.chat.stream:
        options = dict(call.chat.body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return body


def _provider_key(route: Route, call: CallContext) -> str:
    byok = call.project.file.provider_keys.get(route.provider)
    if byok:
        return call.config.secret(byok)
    return call.config.secret(call.provider_config(route.provider).api_key_env)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Try the alias's targets in order: retry each with backoff, fall back to the next,
    skip those whose circuit is open, all only while nothing reached the client."""
    state = request[REQUEST_STATE]
    call = request[CALL]
    retries = call.config.gateway.resilience.retries
    last_error: GatewayError | None = None
    for route in call.targets:
        breaker = state.breaker(route)
        for attempt in range(1, retries.attempts_per_target + 1):
            if breaker.state(time.monotonic()) == "open":
                break
            if route is not call.route:
                await call.switch_route(route)  # re-checks the cost caps (402)
            if not breaker.allow(time.monotonic()):  # takes a half-open probe
                break
            try:
                response = await _attempt(request, state, call, route)
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
            breaker.success()
            return response
        if route is not call.targets[-1]:
            state.metrics.upstream_fallbacks.labels(route.provider).inc()
    if last_error is not None:
        raise last_error
    wait = min(state.breaker(r).retry_after(time.monotonic()) for r in call.targets)
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
    request: web.Request, state: GatewayState, call: CallContext, route: Route
) -> web.StreamResponse:
    provider = call.providers[route.provider]
    provider_config = call.provider_config(route.provider)
    upstream = UpstreamRequest(
        body=upstream_body(call, provider_config.max_tokens_param),
        api_key=_provider_key(route, call),
        timeouts=provider_config.timeouts,
        request_id=request[REQUEST_ID],
    )
    gateway_id = "chatcmpl_" + request[REQUEST_ID]
    profile = PROFILES[call.project.file.wire_profile]
    if not call.chat.stream:
        return await _unary(state, call, provider, upstream, gateway_id, profile)
    return await _stream(request, state, call, provider, upstream, gateway_id, profile)


async def _unary(
    state: GatewayState,
    call: CallContext,
    provider: Provider,
    upstream: UpstreamRequest,
    gateway_id: str,
    profile: WireProfile,
) -> web.StreamResponse:
    name = provider.name
    started = time.perf_counter()
    try:
        completion = await provider.complete(upstream)
    except GatewayError as exc:
        state.metrics.upstream_errors.labels(name, f"http_{exc.status}").inc()
        if isinstance(exc, UpstreamTimeout) or exc.billable:
            # The provider may have done (timeout) or did (answer lost after its 200) the
            # whole job: bill the worst case, and do not pay for it twice by retrying.
            call.add_billed(estimate(call.input_bound, call.output_ceiling, 0, finished=False))
            reason = "timeout" if isinstance(exc, UpstreamTimeout) else "answer_lost"
            state.metrics.estimated_usage.labels(call.project.slug, reason).inc()
            exc.retryable = False
        raise
    except asyncio.CancelledError:
        # The client left while the provider was working: it may still bill us in full.
        call.add_billed(estimate(call.input_bound, call.output_ceiling, 0, finished=False))
        state.metrics.estimated_usage.labels(call.project.slug, "client_disconnected").inc()
        raise
    finally:
        elapsed = time.perf_counter() - started
        call.upstream_seconds += elapsed
        state.metrics.upstream_duration.labels(name).observe(elapsed)
    usage = from_openai(completion.get("usage"))
    if usage is None:
        produced = sum(
            len(str((c.get("message") or {}).get("content") or "").encode())
            for c in completion["choices"]
        )
        usage = estimate(call.input_bound, call.output_ceiling, produced, finished=True)
        state.metrics.estimated_usage.labels(call.project.slug, "no_usage").inc()
    call.add_billed(usage)
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
) -> web.StreamResponse:
    name = provider.name
    started = time.perf_counter()
    try:
        stream: ChunkStream = await provider.open_stream(upstream)
    except asyncio.CancelledError:
        # The client left after the request went out: the provider may be generating.
        call.add_billed(estimate(call.input_bound, call.output_ceiling, 0, finished=False))
        state.metrics.estimated_usage.labels(call.project.slug, "client_disconnected").inc()
        raise
    except GatewayError as exc:
        # Before any byte: nothing was generated that we could see or the provider bills
        # (a first-byte timeout on a stream means the request was not even accepted).
        call.upstream_seconds += time.perf_counter() - started
        state.metrics.upstream_errors.labels(name, f"http_{exc.status}").inc()
        raise
    relay = _Relay(call, gateway_id, profile)
    batches = stream.batches()
    response: web.StreamResponse | None = None
    metrics = state.metrics
    try:
        # Nothing reaches the client before the first upstream chunk: failures up to
        # here are still plain HTTP errors, and may be retried.
        deferred: UpstreamStreamError | None = None
        try:
            # first_byte bounds the first token, not only the response headers.
            async with asyncio.timeout(upstream.timeouts.first_byte):
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
                relay.declined = isinstance(exc, UpstreamStreamError) and exc.declared
                failed: GatewayError
                if code == "upstream_timeout":
                    failed = UpstreamTimeout.detail(f"provider {name} timed out")
                else:
                    failed = UpstreamFailed.detail(f"provider {name} failed before the first byte")
                # A provider that refused (error frame) billed nothing: retry. One cut after
                # its 200 may have generated: that attempt is billed (relay), not retried.
                failed.retryable = relay.declined
                raise failed from exc
        call.upstream_seconds += time.perf_counter() - started
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        metrics.open_streams.inc()
        task = asyncio.current_task()
        if task is not None:
            state.streams.add(task)  # shutdown cancels these when the grace period ends
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
            await response.write(relay.trailer())
        except UpstreamStreamError as exc:
            outcome = "upstream_error"
            metrics.upstream_errors.labels(name, exc.code).inc()
            error = profile.error_event(exc.code, name, exc.message)
            await _write_quietly(response, relay.encode(exc.pending) + error)
        except (ConnectionResetError, ConnectionError):
            outcome = "client_disconnected"
        except asyncio.CancelledError:
            if not state.ready:
                # Shutdown grace period over: tell the client why the stream ends.
                call.stream_outcome = "gateway_shutdown"
                message = "the gateway is shutting down; retry the request"
                await _write_quietly(
                    response, profile.error_event("gateway_shutdown", name, message)
                )
            else:
                # handler_cancellation: the client went away while we waited on the upstream.
                call.stream_outcome = "client_disconnected"
            raise
        finally:
            metrics.open_streams.dec()
            if task is not None:
                state.streams.discard(task)
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


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionResetError, ConnectionError):
        await response.write(data)


class _Relay:
    """Re-stamps chunks for the client, keeps the usage chunk, counts what was produced."""

    def __init__(self, call: CallContext, gateway_id: str, profile: WireProfile) -> None:
        self.call = call
        self.gateway_id = gateway_id
        self.profile = profile
        self.reported: Usage | None = None
        self.produced_bytes = 0
        self.finished = False
        self.declined = False  # the provider refused before producing anything
        self.created = int(time.time())
        # The profile's framing of one chunk, split around the JSON (one concatenation
        # per chunk instead of two method calls).
        self._head, _, self._tail = profile.frame(b"\x00").partition(b"\x00")

    async def write(self, response: web.StreamResponse, batch: list[dict[str, Any]]) -> None:
        """Relay one upstream read's chunks in a single write."""
        data = self.encode(batch)
        if data:
            await response.write(data)

    def encode(self, batch: list[dict[str, Any]]) -> bytes:
        frames = []
        for chunk in batch:
            frame = self._frame(chunk)
            if frame is not None:
                frames.append(frame)
        return b"".join(frames)

    def _frame(self, chunk: dict[str, Any]) -> bytes | None:
        usage = chunk.pop("usage", None)
        extension = chunk.get("x_groq")
        if isinstance(extension, dict) and "usage" in extension:
            # Groq repeats (older streams: only sends) usage here: ours to keep, too.
            groq_usage = extension.pop("usage")
            if usage is None:
                usage = groq_usage
        if usage is not None:
            self.reported = from_openai(usage) or self.reported
        choices = chunk.get("choices")
        if not choices:
            if usage is not None:
                return None  # the usage chunk: re-emitted at the end if the client asked
        else:
            for choice in choices:
                delta = choice.get("delta") or {}
                for field, value in delta.items():
                    # Every generated field counts toward the estimate (content, refusal,
                    # reasoning, tool-call arguments, non-standard ones), the role does not.
                    if field == "role" or not value:
                        continue
                    self.produced_bytes += (
                        len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value))
                    )
                    if self.call.first_token_at is None:
                        self.call.first_token_at = time.perf_counter()
                if choice.get("finish_reason"):
                    self.finished = True
        chunk["id"] = self.gateway_id
        chunk["object"] = "chat.completion.chunk"
        chunk["model"] = self.call.alias
        self.created = chunk.setdefault("created", self.created)
        return self._head + orjson.dumps(chunk) + self._tail

    def trailer(self) -> bytes:
        out = b""
        if self.call.chat.include_usage:
            usage = self.reported or estimate(
                self.call.input_bound, self.call.output_ceiling, self.produced_bytes, self.finished
            )
            out = self.profile.usage_chunk(self.gateway_id, self.created, self.call.alias, usage)
        return out + self.profile.done()

    def billed(self, state: GatewayState, call: CallContext) -> Usage | None:
        if self.reported is not None:
            return self.reported
        if self.declined:
            return None
        reason = "no_usage" if self.finished else "stream_cut"
        state.metrics.estimated_usage.labels(call.project.slug, reason).inc()
        return estimate(call.input_bound, call.output_ceiling, self.produced_bytes, self.finished)
