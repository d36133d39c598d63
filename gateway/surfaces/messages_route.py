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

from gateway.context import PROJECT
from gateway.pipeline.hold import charge_requests
from gateway.pipeline.request import plan_chat, read_json
from gateway.proxy import run_call
from gateway.surfaces.messages import (
    MessagesRequest,
    MessagesStream,
    count_tokens_estimate,
    parse_count_tokens,
    parse_request,
    unary_message,
)
from gateway.usage import Usage


def new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


class MessagesSurface:
    """Writes one request's answer as an Anthropic Message or its event stream."""

    name = "messages"
    operation: Literal["chat", "embeddings"] = "chat"

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        raise NotImplementedError("a chat surface: the pipeline rewrites the chat body")

    def __init__(self, message_id: str, alias: str, input_bound: int) -> None:
        self.message_id = message_id
        self.alias = alias
        self.input_bound = input_bound

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
    # Every route is a chat route for now (no native Anthropic passthrough): what only
    # a native route could honour is refused, naming it.
    asked.refuse_for_chat()
    call = plan_chat(request, asked.chat_body)
    surface = MessagesSurface(new_message_id(), call.alias, call.input_bound)
    call.surface = surface.name
    return await run_call(request, call, surface)


async def count_tokens(request: web.Request) -> web.Response:
    """An upper bound of the input tokens (marked as an estimate), never billed."""
    body = await read_json(request)
    asked = parse_count_tokens(body, request.headers)
    await charge_requests(request)  # rate limited like any request, never billed
    project = request[PROJECT]
    alias = asked.model or project.file.default_model
    limits = project.input_limits.get(alias)
    if limits is None:
        image_bound, context_tokens = 48_169, None
    else:
        image_bound, context_tokens = limits
    counted = count_tokens_estimate(asked, image_bound=image_bound, context_tokens=context_tokens)
    response = web.json_response(counted)
    response.headers["X-Karta-Estimate"] = "upper-bound"
    return response
