"""``POST /v1/projects/{ref}/embeddings``: OpenAI's embeddings on the same pipeline as
chat (idempotency, hold, forward with retries, fallbacks and breakers, settle), with an
input-only budget: the worst case is the input bound, the output ceiling 0, and the
settle charges the reported ``prompt_tokens`` (gateway.surfaces.embeddings).
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

from gateway.config import ProviderConfig
from gateway.context import CALL, PROJECT, REQUEST_STATE, CallContext
from gateway.pipeline.request import plan_alias, read_json
from gateway.proxy import run_call
from gateway.surfaces.embeddings import (
    EmbeddingsRequest,
    client_answer,
    parse_request,
    upstream_body,
)
from gateway.usage import Usage
from gateway.validation import ChatRequest


class EmbeddingsSurface:
    name = "embeddings"
    operation: Literal["chat", "embeddings"] = "embeddings"

    def __init__(self, request: EmbeddingsRequest, alias: str) -> None:
        self.request = request
        self.alias = alias

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        return upstream_body(self.request, upstream_model)

    def native(self, provider: ProviderConfig, upstream_model: str, ceiling: int) -> None:
        return None  # embeddings are one format: their body is already the upstream's

    def stream(self) -> Any:
        raise NotImplementedError("embeddings are never streamed")

    def unary(self, completion: dict[str, Any], usage: Usage) -> dict[str, Any]:
        return client_answer(completion, self.alias, usage.input_tokens)


def plan_embeddings(request: web.Request, asked: EmbeddingsRequest) -> CallContext:
    """The call the hold reserves: the alias (of kind embedding) resolved to its
    targets, the input bound as the whole worst case."""
    state = request[REQUEST_STATE]
    project = request[PROJECT]
    config = state.config
    alias = asked.model or project.file.default_model
    targets = plan_alias(request, alias, "embedding")
    call = CallContext(
        project=project,
        # The pipeline reads a call's shape from here: unary, one answer, no output.
        chat=ChatRequest(
            body=asked.body, model=alias, stream=False, include_usage=False, max_tokens=0, n=1
        ),
        alias=alias,
        route=targets[0],
        targets=targets,
        price=config.gateway.prices.get(targets[0].model),
        input_bound=asked.input_bound,
        output_ceiling=0,
        config=config,
        providers=state.providers,
    )
    call.surface = "embeddings"
    request[CALL] = call  # for observe
    return call


async def create_embeddings(request: web.Request) -> web.StreamResponse:
    asked = parse_request(await read_json(request))
    call = plan_embeddings(request, asked)
    return await run_call(request, call, EmbeddingsSurface(asked, call.alias))
