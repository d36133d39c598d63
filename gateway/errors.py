"""Errors a request can end with, and how each is rendered.

    GatewayError                      an answer with a status and a JSON body
    ├── BadRequest          400       malformed HTTP (answered by gateway.http.malformed)
    ├── Unauthorized        401       credential missing/malformed/expired/revoked
    ├── Forbidden           403       wrong project, scope, or model not allowed
    ├── NotFound            404       unknown project, model alias or endpoint
    ├── MethodNotAllowed    405       a known path, another method
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
    ├── ServiceUnavailable  503       budget store unreachable
    ├── ProviderKeyMissing  503       the route's provider key variable is unset
    └── InternalError       500       anything unexpected

Each is rendered per wire profile (GatewayError.render): the karta body, or OpenAI's
error object. The outermost middleware (gateway.http.middleware.errors) renders them
under the request's profile, and turns aiohttp's own HTTP errors and any unexpected
exception into them: only these bodies reach clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from gateway.budget.refusal import Refusal


class GatewayError(Exception):
    """An answer with a status and a body, rendered per wire profile (see ``render``).

    ``body`` is the karta profile's documented shape; ``error_type`` and ``code`` name
    the failure in OpenAI's error object (the ``openai`` profile)."""

    status = 500
    error_type = "api_error"
    code = "internal_error"
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

    @property
    def message(self) -> str:
        """What a person reads: the body's ``message``, else its ``detail``."""
        text = self.body.get("message") or self.body.get("detail") or self.body.get("reason")
        return str(text) if text else self.code.replace("_", " ")

    def render(self, profile: str) -> dict[str, Any]:
        """The body under a wire profile.

        ``openai``: OpenAI's ``{"error": {"message", "type", "param", "code"}}``, with the
        gateway's own fields (scope, window, limit, ...) inside the error object.
        ``karta``: the documented body, plus a ``message`` beside a ``detail`` (the
        official SDKs print the top-level ``message`` when there is no ``error`` object).
        """
        if profile == "openai":
            extra = {
                k: v
                for k, v in self.body.items()
                if k not in ("detail", "message", "error", "param", "type", "code")
            }
            code = self.body.get("error")
            error = {
                "message": self.message,
                "type": self.error_type,
                "param": self.body.get("param"),
                "code": code if isinstance(code, str) else self.code,
                **extra,
            }
            return {"error": error}
        if "detail" in self.body and "message" not in self.body:
            return {**self.body, "message": self.message}
        return self.body

    def response(self, profile: str = "karta") -> web.Response:
        return json_error(self.status, self.render(profile), self.headers)


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "bad_request"


class Unauthorized(GatewayError):
    status = 401
    error_type = "authentication_error"
    code = "unauthorized"

    def __init__(self, reason: str = "missing") -> None:
        # One body for every cause: callers learn nothing about which check failed.
        super().__init__(
            {
                "detail": "Unauthorized",
                "message": "Unauthorized: send an API key (kt_live_...) or a session token "
                "as 'Authorization: Bearer <credential>'",
            },
            {"WWW-Authenticate": "Bearer"},
        )
        self.reason = reason


class Forbidden(GatewayError):
    status = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    error_type = "not_found_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    error_type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class ValidationFailed(GatewayError):
    status = 422
    error_type = "invalid_request_error"
    code = "validation_failed"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__({"error": "validation_failed", "message": message, "param": param})


class ByokKeyRejected(GatewayError):
    status = 422
    error_type = "invalid_request_error"
    code = "byok_key_rejected"

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
    error_type = "invalid_request_error"
    code = "request_timeout"


class BudgetExhausted(GatewayError):
    status = 402
    error_type = "budget_error"
    code = "budget_exhausted"

    @classmethod
    def refused(cls, refusal: Refusal, max_tokens_fit: int | None = None) -> Self:
        """The 402 of a refused reservation (see ``budget_exhausted_body``)."""
        return cls(budget_exhausted_body(refusal, max_tokens_fit))


def budget_exhausted_body(refusal: Refusal, max_tokens_fit: int | None = None) -> dict[str, Any]:
    """The documented 402 body, with a ``message`` that says what the caller can do
    (``max_tokens_fit``: the largest max_tokens that fits now, see
    gateway.budget.fitting_output)."""
    resets = refusal.resets_at
    body: dict[str, Any] = {
        "error": "budget_exhausted",
        "reason": refusal.reason,
        "message": _budget_message(refusal, max_tokens_fit, resets),
        "scope": refusal.scope,
        "window": refusal.window,
        "dimension": refusal.dimension,
        "limit": refusal.limit,
        "used": refusal.used,
        "reserved": refusal.reserved,
        "requested": refusal.requested,
        "resets_at": resets,
    }
    if max_tokens_fit is not None:
        body["max_tokens_fit"] = max_tokens_fit
    return body


def _budget_message(refusal: Refusal, max_tokens_fit: int | None, resets: str | None) -> str:
    if refusal.dimension == "cost_usd":
        left = f"${_usd(refusal.room)} of ${_usd(refusal.limit)} left"
        need = f"this request may cost up to ${_usd(refusal.requested)}"
    else:
        dimension = refusal.dimension.replace("_", " ")
        left = f"{refusal.room} of {refusal.limit} {dimension} left"
        need = f"this request may use {refusal.requested}"
    text = f"{refusal.reason}: {left}, {need}"
    if max_tokens_fit is not None:
        text += f"; a request with max_tokens <= {max_tokens_fit} fits now"
    if resets is not None:
        text += f"; the {refusal.window} window resets at {resets}"
    elif max_tokens_fit is None:
        text += "; a lifetime cap does not reset: ask the operator to raise it"
    return text


def _usd(nano: int) -> str:
    """Nano-USD as dollars, with as many decimals as it needs (at least two)."""
    text = f"{nano / 1e9:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamRateLimited(RateLimited):
    """The provider answered 429: retried (honouring Retry-After), then relayed."""

    code = "upstream_rate_limited"
    retryable = True
    # The provider's Retry-After as accepted seconds (gateway.retryafter); None: absent
    # or not accepted.
    upstream_retry_after: int | None = None


class UpstreamFailed(GatewayError):
    status = 502
    error_type = "upstream_error"
    code = "upstream_failed"
    retryable = True


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "upstream_error"
    code = "upstream_timeout"
    retryable = True


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    code = "service_unavailable"


class ProviderKeyMissing(GatewayError):
    """The route's provider key is not configured: the variable its ``api_key_env`` (or
    the project's BYOK ``provider_keys`` entry) names is unset or empty. Raised before
    anything is sent: not the provider's fault (no breaker failure), and another attempt
    on the same target cannot fix it (not retryable)."""

    status = 503
    error_type = "service_unavailable"
    code = "provider_key_not_configured"

    def __init__(self, provider: str, variable: str) -> None:
        # The variable's name only, never a value. x-should-retry: the official SDKs
        # retry a 503 unless told not to, and only a restart with the key set fixes it.
        super().__init__(
            {
                "error": "provider_key_not_configured",
                "provider": provider,
                "message": f"provider {provider} has no key configured ({variable} is not set)",
            },
            {"x-should-retry": "false"},
        )


class InternalError(GatewayError):
    """An unexpected exception: nothing of it (type, message, traceback) is shown."""

    def __init__(self) -> None:
        super().__init__({"detail": "internal error"})


def json_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )
