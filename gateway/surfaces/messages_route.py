"""``POST /v1/projects/{ref}/v1/messages`` (and ``/v1/messages/count_tokens``):
Anthropic's Messages API on the chat pipeline (translated: gateway.surfaces.messages).

The Anthropic SDK and Claude Code, given ``base_url`` ``http://host/v1/projects/{ref}``,
append ``/v1/messages`` and send the credential as ``x-api-key`` (auth reads it too).
Parse, plan the chat call, and run it through the same idempotency, hold, forward,
relay and settle as chat; the answer is written as a Message or its event stream, and
errors in Anthropic's shape (gateway.http.middleware.errors).
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from aiohttp import web

from gateway.config import ProviderConfig, Route
from gateway.context import PROJECT, REQUEST_ID, REQUEST_STATE
from gateway.errors import ValidationFailed
from gateway.pipeline.hold import charge_requests
from gateway.pipeline.request import plan_alias, plan_chat, read_json
from gateway.providers.base import UpstreamRequest
from gateway.proxy import provider_key, run_call
from gateway.surfaces.base import NativeCall
from gateway.surfaces.messages import (
    MessagesRequest,
    MessagesStream,
    count_tokens_estimate,
    parse_count_tokens,
    parse_request,
    unary_message,
)
from gateway.surfaces.native_messages import (
    NativeMessagesStream,
    message_usage,
    native_unary,
    rewrite_request,
)
from gateway.surfaces.native_relay import RelayTranslator
from gateway.usage import Usage


def new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


class MessagesSurface:
    """Writes one request's answer as an Anthropic Message or its event stream."""

    name = "messages"
    operation: Literal["chat", "embeddings"] = "chat"

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        raise NotImplementedError("a chat surface: the pipeline rewrites the chat body")

    def __init__(
        self, message_id: str, alias: str, input_bound: int, asked: MessagesRequest
    ) -> None:
        self.message_id = message_id
        self.alias = alias
        self.input_bound = input_bound
        self.asked = asked

    def native(
        self, provider: ProviderConfig, upstream_model: str, ceiling: int
    ) -> NativeCall | None:
        """To an Anthropic route the Messages body goes as sent (the model and the
        clamped max_tokens rewritten: cache marks, signed thinking, top_k, betas kept)."""
        if provider.kind != "anthropic":
            return None
        message_id, alias = self.message_id, self.alias
        headers = {}
        if self.asked.anthropic_version:
            headers["anthropic-version"] = self.asked.anthropic_version
        if self.asked.anthropic_beta:
            headers["anthropic-beta"] = ",".join(self.asked.anthropic_beta)

        def answer(message: Any) -> tuple[dict[str, Any], Usage | None]:
            out, usage = native_unary(message, message_id, alias)
            found = message_usage(message.get("usage")) if isinstance(message, dict) else None
            if usage is not None and found is not None and found[1]:
                usage.cache_creation_1h_input_tokens = found[1]
            return out, usage

        return NativeCall(
            operation="messages",
            body=rewrite_request(self.asked.body, upstream_model, ceiling),
            stream=lambda secret: RelayTranslator(NativeMessagesStream(message_id, alias, secret)),
            answer=answer,
            error=lambda code, message: MessagesStream(message_id, alias).fail(code, message),
            headers=headers,
        )

    def stream(self) -> _Stream:
        return _Stream(MessagesStream(self.message_id, self.alias), self.input_bound)

    def unary(self, completion: dict[str, Any], usage: Usage) -> dict[str, Any]:
        return unary_message(completion, usage, self.message_id, self.alias)


class _Stream:
    def __init__(self, encoder: MessagesStream, input_bound: int) -> None:
        self.encoder = encoder
        self.input_bound = input_bound

    def start(self) -> bytes:
        # message_start's input_tokens: the bound (the SDKs take the final count from
        # message_delta's cumulative usage).
        return self.encoder.start(self.input_bound)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return self.encoder.feed(chunk)

    def finish(self, usage: Usage) -> bytes:
        return self.encoder.finish(usage)

    def fail(self, code: str, message: str) -> bytes:
        return self.encoder.fail(code, message)


async def create_message(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    asked: MessagesRequest = parse_request(body, request.headers)
    call = plan_chat(request, asked.chat_body)
    providers = call.config.gateway.providers
    if all(providers[t.provider].kind == "anthropic" for t in call.targets):
        # Passed through natively: what the chat body dropped (thinking blocks of the
        # history) goes upstream too, so the input bound counts it.
        call.input_bound += asked.dropped_input_bytes
    else:
        # Some target is translated to chat completions: what only an Anthropic route
        # could honour is refused, naming it (betas among them).
        asked.refuse_for_chat()
        if asked.anthropic_beta:
            raise ValidationFailed(
                f"anthropic-beta {', '.join(asked.anthropic_beta)} cannot be honoured: "
                f"model {call.alias!r} may be served by a provider other than Anthropic",
                "anthropic-beta",
            )
    surface = MessagesSurface(new_message_id(), call.alias, call.input_bound, asked)
    call.surface = surface.name
    return await run_call(request, call, surface)


def _counted(answer: Any) -> tuple[dict[str, Any], Usage | None]:
    count = answer.get("input_tokens") if isinstance(answer, dict) else None
    if type(count) is not int or count < 0:
        raise ValueError("not a token count")
    return {"input_tokens": count}, None


async def _count_upstream(
    request: web.Request, asked: MessagesRequest, route: Route, provider: ProviderConfig
) -> web.Response:
    """An Anthropic route counts for itself (its tokenizer, not the gateway's bound)."""
    state = request[REQUEST_STATE]
    headers = {}
    if asked.anthropic_version:
        headers["anthropic-version"] = asked.anthropic_version
    if asked.anthropic_beta:
        headers["anthropic-beta"] = ",".join(asked.anthropic_beta)
    upstream = UpstreamRequest(
        body={**asked.body, "model": route.model},
        api_key=provider_key(route, request[PROJECT], state.config),
        timeouts=provider.timeouts,
        request_id=request[REQUEST_ID],
        extra_headers=headers,
        operation="count_tokens",
        native_answer=_counted,
    )
    counted, _ = await state.providers[route.provider].complete(upstream)
    return web.json_response(counted)


async def count_tokens(request: web.Request) -> web.Response:
    """An upper bound of the input tokens (marked as an estimate), never billed."""
    body = await read_json(request)
    asked = parse_count_tokens(body, request.headers)
    await charge_requests(request)  # rate limited like any request, never billed
    project = request[PROJECT]
    alias = asked.model or project.file.default_model
    route = plan_alias(request, alias, "chat")[0]
    config = request[REQUEST_STATE].config
    provider = config.gateway.providers[route.provider]
    if provider.kind == "anthropic":
        return await _count_upstream(request, asked, route, provider)
    limits = project.input_limits.get(alias)
    if limits is None:
        image_bound, context_tokens = 48_169, None
    else:
        image_bound, context_tokens = limits
    counted = count_tokens_estimate(asked, image_bound=image_bound, context_tokens=context_tokens)
    response = web.json_response(counted)
    response.headers["X-Karta-Estimate"] = "upper-bound"
    return response
