"""``POST /v1/projects/{ref}/responses`` and ``GET .../responses/{id}``: OpenAI's
Responses API on the chat pipeline (translated: gateway.surfaces.responses).

Parse (the Responses body, and the stored turns of ``previous_response_id``, which the
input bound then counts), plan the chat call, and run it through the same idempotency,
hold, forward, relay and settle as chat; the answer is written as a Responses object
or event stream, and stored (unless ``store: false``) for a later continuation.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from aiohttp import web

from gateway.config import ProviderConfig
from gateway.context import PRINCIPAL, PROJECT, REQUEST_STATE
from gateway.errors import NotFound, ValidationFailed
from gateway.pipeline.request import plan_chat, read_json
from gateway.proxy import run_call
from gateway.surfaces.base import NativeCall
from gateway.surfaces.conversations import ConversationStore, StoredResponse
from gateway.surfaces.native_relay import RelayTranslator, responses_error
from gateway.surfaces.native_responses import NativeResponsesStream
from gateway.surfaces.native_responses import native_unary as native_responses_unary
from gateway.surfaces.native_responses import rewrite_request as native_rewrite
from gateway.surfaces.responses import (
    ResponsesRequest,
    ResponsesStream,
    continue_from,
    new_response_id,
    parse_request,
    stored_turns,
    unary_response,
)
from gateway.usage import Usage


class ResponsesSurface:
    """Writes one request's answer as a Responses object or event stream, and keeps
    the final response object (what is stored for ``previous_response_id``)."""

    name = "responses"
    operation: Literal["chat", "embeddings"] = "chat"

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        raise NotImplementedError("a chat surface: the pipeline rewrites the chat body")

    def __init__(
        self,
        request: ResponsesRequest,
        response_id: str,
        alias: str,
        native_body: dict[str, Any] | None = None,
    ) -> None:
        self.request = request
        # The client's body, when every target takes Responses natively (None: translated).
        self.native_body = native_body
        self.response_id = response_id
        self.alias = alias
        self.created = int(time.time())
        self.final: dict[str, Any] | None = None
        self._stream: ResponsesStream | None = None

    def stream(self) -> _Stream:
        self._stream = ResponsesStream(self.response_id, self.alias, self.request, self.created)
        return _Stream(self, self._stream)

    def native(
        self, provider: ProviderConfig, upstream_model: str, ceiling: int
    ) -> NativeCall | None:
        """To OpenAI the Responses body goes as sent (the model and the clamped
        max_output_tokens rewritten): reasoning items, previous_response_id, hosted
        features the gateway does not translate all survive."""
        if self.native_body is None or not _native(provider):
            return None
        alias = self.alias
        return NativeCall(
            operation="responses",
            body=native_rewrite(self.native_body, upstream_model, ceiling),
            stream=lambda secret: RelayTranslator(NativeResponsesStream(alias, secret)),
            answer=lambda answer: native_responses_unary(answer, alias),
            error=responses_error,
        )

    def unary(self, completion: dict[str, Any], usage: Usage) -> dict[str, Any]:
        self.final = unary_response(
            completion, usage, self.response_id, self.alias, self.request, self.created
        )
        return self.final


class _Stream:
    def __init__(self, surface: ResponsesSurface, encoder: ResponsesStream) -> None:
        self.surface = surface
        self.encoder = encoder

    def start(self) -> bytes:
        return self.encoder.start()

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return self.encoder.feed(chunk)

    def finish(self, usage: Usage) -> bytes:
        out = self.encoder.finish(usage)
        self.surface.final = self.encoder.response
        return out

    def fail(self, code: str, message: str) -> bytes:
        return self.encoder.fail(code, message)


def _store(request: web.Request) -> ConversationStore:
    state = request[REQUEST_STATE]
    return ConversationStore(state.store, request[PROJECT].id, request[PRINCIPAL])


def _native(provider: ProviderConfig) -> bool:
    """Whether a provider takes Responses calls natively (OpenAI's own)."""
    return provider.kind == "openai" and provider.responses_path is not None


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    asked = parse_request(body)
    previous: StoredResponse | None = None
    call = plan_chat(request, asked.chat)
    providers = call.config.gateway.providers
    native = all(_native(providers[t.provider]) for t in call.targets)
    if asked.previous_response_id is not None and native:
        # The provider keeps the conversation and replays it: the bound is the most a
        # replay can be, the model's context window.
        context = call.project.input_limits[call.alias][1]
        if context is None:
            raise ValidationFailed(
                "previous_response_id on a route the provider serves natively replays turns "
                "the gateway cannot see: it needs the model's context window "
                "(prices.<model>.context_tokens) to bound them",
                "previous_response_id",
            )
        call.input_bound = max(call.input_bound, context)
    elif asked.previous_response_id is not None:
        previous = await _store(request).load(asked.previous_response_id)
        if previous is None:
            raise NotFound.detail(
                f"response {asked.previous_response_id!r} not found (unknown, expired, or "
                "created by another credential)"
            )
        call = plan_chat(request, continue_from(previous.turns, asked))
    surface = ResponsesSurface(asked, new_response_id(), call.alias, body if native else None)
    call.surface = surface.name
    response = await run_call(request, call, surface)
    if asked.store and surface.final is not None and surface.final.get("status") != "failed":
        ttl = call.config.gateway.limits.stored_response_ttl_seconds
        turns = stored_turns(asked, surface.final, previous.turns if previous else None)
        await _store(request).save(
            surface.response_id, StoredResponse(turns=turns, response=surface.final), ttl
        )
    return response


async def get_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    found = await _store(request).load(response_id)
    if found is None:
        raise NotFound.detail(
            f"response {response_id!r} not found (unknown, expired, not stored, or "
            "created by another credential)"
        )
    return web.json_response(found.response)
