"""The request step of the pipeline: the JSON body (bounded), its validation, the
model alias and its targets, and the worst case the hold reserves (``input_bound``,
``output_ceiling``). Runs in the handler, after auth (the project is known).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.config import LimitsConfig, Route
from gateway.context import CALL, PROJECT, REQUEST_STATE, CallContext
from gateway.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ValidationFailed,
)
from gateway.jsonlimits import NotJson, TooDeep, TooManyElements, load_bounded
from gateway.params import refuse_unknown
from gateway.routing import plan_targets
from gateway.usage import UnboundedInput, input_token_bound, output_ceiling
from gateway.validation import asks_for_json, validate_chat_request


async def read_body(request: web.Request, caps: LimitsConfig) -> bytes:
    """The whole body, within ``limits.body_timeout_seconds`` (else 408: a client
    trickling its body must not hold the request, nor its in-flight slot, indefinitely;
    the connection is closed after the answer, the rest drained for at most a couple
    of seconds: gateway.http.connections)."""
    try:
        async with asyncio.timeout(caps.body_timeout_seconds):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout.detail(
            f"request body not received within {caps.body_timeout_seconds:g} s "
            "(limits.body_timeout_seconds)"
        ) from None


def bounded_json(raw: bytes, caps: LimitsConfig) -> Any:
    """A request body decoded within ``limits.max_json_elements`` (else 413) and
    ``limits.max_json_depth`` (else 422): bounded before decoding, since a body of many
    tiny elements costs ~50x its size in memory and a walk over it stalls the loop for
    every tenant."""
    try:
        return load_bounded(raw, caps.max_json_elements, caps.max_json_depth)
    except NotJson:
        raise ValidationFailed("request body is not valid JSON", None) from None
    except TooManyElements:
        raise PayloadTooLarge.detail(
            f"request body has more than {caps.max_json_elements} JSON elements "
            "(limits.max_json_elements)"
        ) from None
    except TooDeep:
        # Also within what orjson writes back (254 levels): the limit is at most 200.
        raise ValidationFailed(
            f"request body is nested deeper than {caps.max_json_depth} levels "
            "(limits.max_json_depth)",
            None,
        ) from None


async def read_json(request: web.Request) -> Any:
    """A spending request's JSON body, read and decoded within the limits, once its
    project is known to be enabled (409 otherwise)."""
    if not request[PROJECT].file.enabled:
        raise Conflict.detail("project is disabled")
    limits = request[REQUEST_STATE].config.gateway.limits
    # Over client_max_size (counted decoded: a compressed body is inflated by aiohttp,
    # chunk by chunk, and bounded the same): 413 from aiohttp, rendered as JSON.
    return bounded_json(await read_body(request, limits), limits)


def plan_alias(request: web.Request, alias: str, kind: str) -> list[Route]:
    """The targets of a project's alias, in the order to try them: 404 if unknown, 422
    naming ``model`` if it serves another kind (chat or embedding), 409 if unrouted."""
    spec = request[PROJECT].file.models.get(alias)
    if spec is None:
        raise NotFound.detail(f"model {alias!r} is not configured for this project")
    if spec.kind != kind:
        use = "use it with /embeddings" if kind == "chat" else "embeddings need an embedding alias"
        raise ValidationFailed(f"model {alias!r} is a {spec.kind} model: {use}", "model")
    if not spec.routes:
        raise Conflict.detail(f"model {alias!r} has no active route")
    return plan_targets(spec.routes, request[REQUEST_STATE].rng)


async def chat_call(request: web.Request) -> CallContext:
    """Read and validate a chat request, resolve its alias to its targets and bound its
    worst case: the call the hold reserves (also put on the request, for observe)."""
    return plan_chat(request, await read_json(request))


def plan_chat(request: web.Request, body: Any) -> CallContext:
    """A chat-completions body (the client's, or one a surface translated to) as the
    call the hold reserves: validated, its alias resolved to targets, its worst case
    bounded (also put on the request, for observe)."""
    state = request[REQUEST_STATE]
    project = request[PROJECT]
    # The config the project was resolved from (auth does not wait), kept for the whole
    # request: a reload during it must not mix two configs.
    config, providers = state.config, state.providers
    chat = validate_chat_request(body)
    alias = chat.model or project.file.default_model
    targets = plan_alias(request, alias, "chat")
    specs = config.gateway.providers
    # What any target may receive beyond the understood parameters: refused unless some
    # target's operator allowed it, and counted in the bound wherever it may go.
    extras = frozenset().union(*(specs[t.provider].extra_params for t in targets))
    refuse_unknown(body, extras)
    # Anthropic routes carry a JSON response_format as a forced tool: the provider's
    # tool-use prompt then counts as well.
    uses_tools = bool(body.get("tools")) or asks_for_json(body)
    tools_overhead = max(specs[t.provider].tools_overhead for t in targets) if uses_tools else 0
    route = targets[0]
    image_bound, context_tokens = project.input_limits[alias]  # computed at load
    try:
        input_bound = input_token_bound(body, image_bound, context_tokens, extras) + tools_overhead
    except UnboundedInput as exc:
        raise ValidationFailed(
            "a file part's tokens cannot be bounded without the model's context window "
            "(prices.<model>.context_tokens in the gateway's config), so no budget can "
            "be reserved for it",
            exc.param,
        ) from None
    call = request[CALL] = CallContext(
        project=project,
        chat=chat,
        alias=alias,
        route=route,
        targets=targets,
        price=config.gateway.prices.get(route.model),
        input_bound=input_bound,
        output_ceiling=output_ceiling(chat.max_tokens, project.file.max_output_tokens, chat.n),
        config=config,
        providers=providers,
    )
    return call
