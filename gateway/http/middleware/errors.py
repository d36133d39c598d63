"""The outermost middleware: every failure leaves as the documented status and a JSON
body (gateway.errors), under the request's wire profile; aiohttp's own refusals (404
and 405 routing, 413 over ``client_max_size``) too. An unexpected exception becomes a
500 and its type (never its message or traceback) is logged with the request id.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.context import PROJECT, REQUEST_ID, REQUEST_STATE
from gateway.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    json_error,
)
from gateway.surfaces.messages_answer import error_body as anthropic_error_body

log = logging.getLogger("gateway.errors")

# Every endpoint this gateway serves ("METHOD /path"), named by a 404 for a path it
# does not serve. Set by create_app from its router (see endpoint_list).
ENDPOINTS: web.AppKey[tuple[str, ...]] = web.AppKey("endpoints", tuple)
# The body size limit, named by a 413 (set by create_app).
MAX_BODY_BYTES: web.AppKey[int] = web.AppKey("max_body_bytes", int)


def endpoint_list(app: web.Application) -> tuple[str, ...]:
    """ "METHOD /path" for each API route (under ``/v1/``) of ``app`` and its
    sub-applications (whose routes' paths include their prefix once registered)."""
    out: list[str] = []

    def walk(router: web.UrlDispatcher) -> None:
        for resource in router.resources():
            if isinstance(resource, web.PrefixedSubAppResource):
                walk(resource._app.router)
                continue
            for route in resource:
                path = resource.canonical
                if route.method not in ("HEAD", "OPTIONS", "*") and path.startswith("/v1/"):
                    out.append(f"{route.method} {path}")

    walk(app.router)
    return tuple(out)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> GatewayError:
    """aiohttp's own refusals (routing, body size) as the gateway's errors. None of the
    request's bytes (its path, its headers) goes into the message."""
    if exc.status == 404:
        served = request.app.get(ENDPOINTS, ())
        return NotFound(
            {
                "detail": "Not Found",
                "message": "this gateway has no such endpoint; it serves: " + ", ".join(served),
            }
        )
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return MethodNotAllowed(
            {
                "detail": "Method Not Allowed",
                "message": f"method not allowed here; allowed: {allow}",
            },
            {"Allow": allow} if allow else None,
        )
    if exc.status == 413:
        limit = request.app.get(MAX_BODY_BYTES)
        message = "request body too large" + (
            f": over {limit} bytes (limits.max_body_bytes)" if limit else ""
        )
        return PayloadTooLarge({"detail": message})
    error = GatewayError({"detail": exc.reason})
    error.status = exc.status
    error.error_type = "invalid_request_error"
    error.code = exc.reason.lower().replace(" ", "_")
    return error


# Routes whose clients read another API's error shape, whatever the project's profile:
# the Anthropic SDK reads Anthropic's, the openai SDK's Responses calls OpenAI's.
ANTHROPIC_ROUTES = frozenset({"anthropic_messages", "anthropic_count_tokens", "anthropic_models"})
OPENAI_ROUTES = frozenset({"responses", "response"})


def _profile(request: web.Request) -> str:
    """The wire profile of this request's errors: the route's own shape (Anthropic
    Messages, OpenAI Responses), else the project's once the caller is authenticated for
    it (set by auth), else the gateway's ``wire_profile``; never the project named in a
    path the caller has not proved access to (that would tell an unauthenticated caller
    which projects exist)."""
    route = request.match_info.route.name if request.match_info is not None else None
    if route in ANTHROPIC_ROUTES:
        return "anthropic"
    if route in OPENAI_ROUTES:
        return "openai"
    project = request.get(PROJECT)
    if project is not None:
        return str(project.file.wire_profile)
    state = request.get(REQUEST_STATE)
    return str(state.config.gateway.wire_profile) if state is not None else "karta"


def _answer(request: web.Request, exc: GatewayError) -> web.Response:
    profile = _profile(request)
    if profile == "anthropic":
        code = exc.body.get("error")
        body = anthropic_error_body(
            exc.status, exc.message, code if isinstance(code, str) else exc.code
        )
        return json_error(exc.status, body, exc.headers)
    return exc.response(profile)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: every failure leaves as the documented status and a JSON body."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return _answer(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _answer(request, _from_http_exception(request, exc))
    except Exception as exc:
        log.error(
            "unhandled error",
            extra={"request_id": request.get(REQUEST_ID), "error_type": type(exc).__name__},
        )
        return _answer(request, InternalError())
