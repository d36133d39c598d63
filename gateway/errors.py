"""Errors a request can end with, and the outermost middleware that renders them.

    GatewayError                      an answer with a status and a JSON body
    ├── Unauthorized        401       credential missing/malformed/expired/revoked
    ├── Forbidden           403       wrong project, scope, or model not allowed
    ├── NotFound            404       unknown project or model alias
    ├── Conflict            409       project disabled / no route
    ├── RequestTimeout      408       body not received in time (names the limit)
    ├── PayloadTooLarge     413       body over a decoding limit (names it)
    ├── ValidationFailed    422       request body invalid (names the field)
    ├── ByokKeyRejected     422       the provider rejected the provider key
    ├── BudgetExhausted     402       a cap would be crossed
    ├── RateLimited         429       too many requests (gateway rate limit)
    │   └── UpstreamRateLimited       the provider's 429 (retryable)
    ├── UpstreamFailed      502       upstream error before the first byte
    ├── UpstreamTimeout     504       upstream timed out before the first byte
    └── ServiceUnavailable  503       budget store unreachable

aiohttp's own HTTP errors (404/405 routing, 413 over ``client_max_size``) are
rendered as ``{"detail": ...}`` too. Only these bodies reach clients: an unexpected
exception becomes a bare 500 and its type (never its message or traceback) is logged
with the request id.
"""

from __future__ import annotations

import logging
from typing import Any, Self

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("gateway.errors")


class GatewayError(Exception):
    status = 500
    # True for upstream failures before the first byte that another attempt may fix.
    retryable = False
    # True when the provider did the work although we lost its answer (bill it).
    billable = False

    def __init__(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("detail") or body.get("message") or body.get("error"))
        self.body = body
        self.headers = headers or {}

    @classmethod
    def detail(cls, text: str, headers: dict[str, str] | None = None) -> Self:
        return cls({"detail": text}, headers)

    def response(self) -> web.Response:
        return json_error(self.status, self.body, self.headers)


class Unauthorized(GatewayError):
    status = 401

    def __init__(self, reason: str = "missing") -> None:
        # One body for every cause: callers learn nothing about which check failed.
        super().__init__({"detail": "Unauthorized"}, {"WWW-Authenticate": "Bearer"})
        self.reason = reason


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class Conflict(GatewayError):
    status = 409


class ValidationFailed(GatewayError):
    status = 422

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__({"error": "validation_failed", "message": message, "param": param})


class ByokKeyRejected(GatewayError):
    status = 422

    def __init__(self, provider: str) -> None:
        super().__init__(
            {
                "error": "byok_key_rejected",
                "provider": provider,
                "message": "the provider rejected the configured API key",
            }
        )


class RequestTimeout(GatewayError):
    status = 408


class PayloadTooLarge(GatewayError):
    status = 413


class BudgetExhausted(GatewayError):
    status = 402


class RateLimited(GatewayError):
    status = 429


class UpstreamRateLimited(RateLimited):
    """The provider answered 429: retried (honouring Retry-After), then relayed."""

    retryable = True
    upstream_retry_after: str | None = None  # as the provider sent it (None: absent)


class UpstreamFailed(GatewayError):
    status = 502
    retryable = True


class UpstreamTimeout(GatewayError):
    status = 504
    retryable = True


class ServiceUnavailable(GatewayError):
    status = 503


def json_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


_HTTP_DETAILS = {404: "Not Found", 405: "Method Not Allowed"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: every failure leaves as the documented status and a JSON body."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = _HTTP_DETAILS.get(exc.status, exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return json_error(exc.status, {"detail": detail}, headers)
    except Exception as exc:
        from gateway.context import REQUEST_ID  # here: the context module imports this one

        log.error(
            "unhandled error",
            extra={"request_id": request.get(REQUEST_ID), "error_type": type(exc).__name__},
        )
        return json_error(500, {"detail": "internal error"})
