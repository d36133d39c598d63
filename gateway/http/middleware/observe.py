"""Observe: request id, timing, in-flight gauge, request metrics and one JSON log line."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.context import (
    CALL,
    CLIENT_REQUEST_ID,
    PRINCIPAL,
    PROJECT,
    REQUEST_ID,
    REQUEST_STATE,
    STATE,
)
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.logs import info_fields

log = logging.getLogger("gateway.access")
# A client's X-Request-Id kept as its client_request_id: bounded, and of characters
# that are safe in a header, a log line and a ledger event; anything else is dropped.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client_request_id(value: str | None) -> str | None:
    """The client's X-Request-Id, if safe to keep (else None)."""
    return value if value is not None and _CLIENT_ID.fullmatch(value) else None


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The gateway's id is always its own (unique: it keys the ledger event, the
    # completion id, the upstream's X-Request-Id); the client's is kept beside it.
    request[REQUEST_ID] = new_id()
    request[CLIENT_REQUEST_ID] = client_request_id(request.headers.get("X-Request-Id")) or ""
    state = request.app[STATE]  # the root app: observe is its middleware
    request[REQUEST_STATE] = state
    if not request.path.startswith("/v1/"):
        return await handler(request)  # /metrics, /healthz, /readyz, /admin: not API calls
    metrics = state.metrics
    started = time.perf_counter()
    metrics.in_flight.inc()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except GatewayError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        # 499: the client closed the connection before the answer finished. A stream
        # it read to the end and then closed (SDKs do, at once) was answered: 200.
        call = request.get(CALL)
        completed = call is not None and call.stream_outcome == "completed"
        status = 200 if completed else 499
        raise
    finally:
        metrics.in_flight.dec()
        elapsed = time.perf_counter() - started
        _record(request, status, elapsed)


def _record(request: web.Request, status: int, elapsed: float) -> None:
    state = request[REQUEST_STATE]
    metrics = state.metrics
    call = request.get(CALL)
    project = request.get(PROJECT)
    if project is None:
        slug, model = "-", "-"
    else:
        slug, model = project.slug, call.alias if call else "-"
    surface = call.surface if call is not None else "-"
    metrics.requests.labels(slug, model, str(status), surface).inc()
    metrics.request_duration.labels(slug).observe(elapsed)
    fields: dict[str, object] = {
        "request_id": request[REQUEST_ID],
        "client_request_id": request[CLIENT_REQUEST_ID] or None,
        "method": request.method,
        "route": request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "-",
        "project": slug,
        "model": model,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
    }
    principal = request.get(PRINCIPAL)
    if principal is not None:
        fields["org"] = principal.org
        fields["key_prefix"] = principal.key_prefix
        fields["auth"] = "session" if principal.session else "key"
    if call is not None:
        metrics.overhead.labels(slug).observe(max(elapsed - call.upstream_seconds, 0.0))
        fields["stream"] = call.chat.stream
        fields["upstream_ms"] = round(call.upstream_seconds * 1000, 3)
        fields["overhead_ms"] = round(max(elapsed - call.upstream_seconds, 0.0) * 1000, 3)
        if call.stream_outcome:
            fields["stream_outcome"] = call.stream_outcome
        if call.billed is not None:
            fields["input_tokens"] = call.billed.input_tokens
            fields["output_tokens"] = call.billed.output_tokens
            fields["estimated"] = call.billed.estimated
    info_fields(log, "request", fields)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, errors and streams included, names its
    request (X-Request-Id, the gateway's id) and echoes the client's accepted id
    (X-Client-Request-Id)."""
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id
    client_id = request.get(CLIENT_REQUEST_ID)
    if client_id:
        response.headers["X-Client-Request-Id"] = client_id
