"""The chat-completions handler: route, forward, relay.

Everything before it (auth, validation, reservation) is middleware; everything
here reads top to bottom: build the upstream request, call the provider, then
either answer once (unary) or relay the stream chunk by chunk, recording on the
call context what to bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.context import CALL, REQUEST_ID, STATE, CallContext, GatewayState
from gateway.errors import GatewayError, UpstreamFailed
from gateway.providers.base import ChunkStream, UpstreamRequest, UpstreamStreamError
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


def _provider_key(state: GatewayState, call: CallContext) -> str:
    byok = call.project.file.provider_keys.get(call.route.provider)
    if byok:
        return state.config.secret(byok)
    return state.config.secret(state.provider_config(call.route.provider).api_key_env)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.config_dict[STATE]
    call = request[CALL]
    provider = state.providers[call.route.provider]
    provider_config = state.provider_config(call.route.provider)
    upstream = UpstreamRequest(
        body=upstream_body(call, "max_completion_tokens"),
        api_key=_provider_key(state, call),
        timeouts=provider_config.timeouts,
        request_id=request[REQUEST_ID],
    )
    gateway_id = "chatcmpl_" + request[REQUEST_ID]
    profile = PROFILES[call.project.file.wire_profile]
    if not call.chat.stream:
        return await _unary(state, call, provider.name, provider, upstream, gateway_id, profile)
    return await _stream(
        request, state, call, provider.name, provider, upstream, gateway_id, profile
    )


def _upstream_failed(
    state: GatewayState, provider: str, exc: GatewayError, call: CallContext
) -> None:
    state.metrics.upstream_errors.labels(provider, f"http_{exc.status}").inc()
    if exc.status == 504:
        # The provider may have worked on the request before timing out: bill the worst case.
        call.billed = estimate(call.input_bound, call.output_ceiling, 0, finished=False)
        state.metrics.estimated_usage.labels(call.project.slug, "timeout").inc()


async def _unary(
    state: GatewayState,
    call: CallContext,
    name: str,
    provider: Any,
    upstream: UpstreamRequest,
    gateway_id: str,
    profile: WireProfile,
) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        completion = await provider.complete(upstream)
    except GatewayError as exc:
        _upstream_failed(state, name, exc, call)
        raise
    except asyncio.CancelledError:
        # The client left while the provider was working: it may still bill us in full.
        call.billed = estimate(call.input_bound, call.output_ceiling, 0, finished=False)
        state.metrics.estimated_usage.labels(call.project.slug, "client_disconnected").inc()
        raise
    finally:
        call.upstream_seconds = time.perf_counter() - started
        state.metrics.upstream_duration.labels(name).observe(call.upstream_seconds)
    usage = from_openai(completion.get("usage"))
    if usage is None:
        produced = sum(
            len(str((c.get("message") or {}).get("content") or "").encode())
            for c in completion["choices"]
        )
        usage = estimate(call.input_bound, call.output_ceiling, produced, finished=True)
        state.metrics.estimated_usage.labels(call.project.slug, "no_usage").inc()
    call.billed = usage
    body = profile.unary(completion, gateway_id, call.alias, usage)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _stream(
    request: web.Request,
    state: GatewayState,
    call: CallContext,
    name: str,
    provider: Any,
    upstream: UpstreamRequest,
    gateway_id: str,
    profile: WireProfile,
) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        stream: ChunkStream = await provider.open_stream(upstream)
    except GatewayError as exc:
        call.upstream_seconds = time.perf_counter() - started
        _upstream_failed(state, name, exc, call)
        raise
    relay = _Relay(call, gateway_id, profile)
    chunks = stream.chunks()
    response: web.StreamResponse | None = None
    metrics = state.metrics
    try:
        # Nothing reaches the client before the first upstream chunk: failures up to
        # here are still plain HTTP errors.
        try:
            first = await anext(chunks)
        except (UpstreamStreamError, StopAsyncIteration) as exc:
            call.upstream_seconds = time.perf_counter() - started
            metrics.upstream_errors.labels(name, "stream_error").inc()
            relay.declined = isinstance(exc, UpstreamStreamError) and exc.declared
            raise UpstreamFailed.detail(f"provider {name} failed before the first byte") from exc
        call.upstream_seconds = time.perf_counter() - started
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        metrics.open_streams.inc()
        outcome = "completed"
        try:
            await relay.write(response, first)
            while True:
                waited = time.perf_counter()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                finally:
                    call.upstream_seconds += time.perf_counter() - waited
                await relay.write(response, chunk)
            await response.write(relay.trailer())
        except UpstreamStreamError as exc:
            outcome = "upstream_error"
            metrics.upstream_errors.labels(name, exc.code).inc()
            await _write_quietly(response, profile.error_event(exc.code, name, exc.message))
        except (ConnectionResetError, ConnectionError):
            outcome = "client_disconnected"
        except asyncio.CancelledError:
            # handler_cancellation: the client went away while we waited on the upstream.
            call.stream_outcome = "client_disconnected"
            raise
        finally:
            metrics.open_streams.dec()
        call.stream_outcome = outcome
        return response
    finally:
        await stream.aclose()
        call.billed = relay.billed(state, call)
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

    async def write(self, response: web.StreamResponse, chunk: dict[str, Any]) -> None:
        usage = chunk.pop("usage", None)
        if usage is not None:
            self.reported = from_openai(usage) or self.reported
        choices = chunk.get("choices")
        if not choices:
            if usage is not None:
                return  # the usage chunk: re-emitted at the end if the client asked
        else:
            for choice in choices:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    self.produced_bytes += len(content.encode())
                    if self.call.first_token_at is None:
                        self.call.first_token_at = time.perf_counter()
                for call in delta.get("tool_calls") or ():
                    args = (call.get("function") or {}).get("arguments")
                    if args:
                        self.produced_bytes += len(args.encode())
                if choice.get("finish_reason"):
                    self.finished = True
        chunk["id"] = self.gateway_id
        chunk["object"] = "chat.completion.chunk"
        chunk["model"] = self.call.alias
        self.created = chunk.setdefault("created", self.created)
        await response.write(self.profile.chunk(chunk))

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
