"""``GET /openapi.json``: the OpenAPI 3.1 document of every public endpoint, as data.

One dict (``document()``, built once), served without auth as pre-encoded bytes. It
describes what the code does, not an ideal: request bodies with the fields each
route's validation accepts (gateway.validation and gateway.params.UNDERSTOOD for chat,
gateway.surfaces for the others), every answer's status and body, the headers the
gateway adds, and the credentials each route takes.

Error bodies depend on the route and the project: the Anthropic routes always answer
Anthropic's error shape, the Responses routes OpenAI's error object, and every other
route the project's wire profile (``karta`` bodies or OpenAI's error object), hence a
``oneOf`` of both. A malformed HTTP request (400) is answered before any route is
known, in the karta shape.

tests/integration/openapi/test_openapi_routes.py fails when a route of create_app is missing
here (or documented here and not routed); add a new route's operations to ``_paths``.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from aiohttp import web

from gateway.params import STREAM_OPTIONS
from gateway.surfaces.embeddings import MAX_ITEMS, MAX_TOKEN_ID
from gateway.surfaces.responses_request import HARMLESS_INCLUDES

JSON = "application/json"
SSE = "text/event-stream"
V1 = "/v1/projects/{project_ref}"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(
    properties: dict[str, Schema],
    required: tuple[str, ...] = (),
    *,
    closed: bool = False,
    description: str | None = None,
) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


STRING: Schema = {"type": "string"}
NONEMPTY: Schema = {"type": "string", "minLength": 1}
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
ANY_OBJECT: Schema = {"type": "object"}


def _number(lo: float, hi: float) -> Schema:
    return {"type": "number", "minimum": lo, "maximum": hi}


# ------------------------------------------------------------------------------- errors

_BUDGET_REQUIRED = (
    "error",
    "reason",
    "message",
    "scope",
    "window",
    "dimension",
    "limit",
    "used",
    "reserved",
    "requested",
    "resets_at",
)
_KARTA_ERRORS: dict[str, Schema] = {
    "KartaError": _object(
        {"detail": STRING, "message": STRING},
        ("detail", "message"),
        description="The karta profile's error body: the reason in `detail`, and a "
        "`message` (the same reason, or how to send a credential) for the SDKs to show.",
    ),
    "KartaBudgetExhausted": _object(
        {
            "error": {"const": "budget_exhausted"},
            "reason": STRING,
            "message": STRING,
            "scope": {"enum": ["project", "key", "user", "org"]},
            "window": {"enum": ["day", "month", "lifetime"]},
            "dimension": {"enum": ["input_tokens", "output_tokens", "total_tokens", "cost_usd"]},
            "limit": COUNT,
            "used": COUNT,
            "reserved": COUNT,
            "requested": COUNT,
            "resets_at": _nullable({"type": "string", "format": "date-time"}),
            "max_tokens_fit": {"type": "integer", "minimum": 1},
        },
        _BUDGET_REQUIRED,
        description="402 (karta): the first cap without room; money in nano-USD. "
        "`max_tokens_fit`: the largest max_tokens that fits now, when lowering it can.",
    ),
    "KartaValidationFailed": _object(
        {
            "error": {"const": "validation_failed"},
            "message": STRING,
            "param": _nullable(STRING),
        },
        ("error", "message", "param"),
        description="422 (karta): the request is invalid; `param` names the field.",
    ),
    "KartaByokKeyRejected": _object(
        {"error": {"const": "byok_key_rejected"}, "provider": STRING, "message": STRING},
        ("error", "provider", "message"),
        description="422 (karta): the provider rejected the configured provider key.",
    ),
    "KartaProviderKeyMissing": _object(
        {
            "error": {"const": "provider_key_not_configured"},
            "provider": STRING,
            "message": STRING,
        },
        ("error", "provider", "message"),
        description="503 (karta): the route's provider key variable is unset or empty.",
    ),
}

_OTHER_ERRORS: dict[str, Schema] = {
    "OpenAIError": _object(
        {
            "error": _object(
                {
                    "message": STRING,
                    "type": {
                        "enum": [
                            "invalid_request_error",
                            "authentication_error",
                            "permission_error",
                            "not_found_error",
                            "conflict_error",
                            "budget_error",
                            "rate_limit_error",
                            "upstream_error",
                            "service_unavailable",
                            "api_error",
                        ]
                    },
                    "param": _nullable(STRING),
                    "code": STRING,
                },
                ("message", "type", "param", "code"),
                description="The gateway's own fields (a 402's scope, window, limit, used, "
                "reserved, requested, resets_at, max_tokens_fit; provider) are inside it.",
            )
        },
        ("error",),
        description="OpenAI's error object (the `openai` profile, and every Responses route).",
    ),
    "AnthropicError": _object(
        {
            "type": {"const": "error"},
            "error": _object(
                {
                    "type": {
                        "enum": [
                            "invalid_request_error",
                            "authentication_error",
                            "billing_error",
                            "permission_error",
                            "not_found_error",
                            "timeout_error",
                            "conflict_error",
                            "request_too_large",
                            "rate_limit_error",
                            "api_error",
                            "overloaded_error",
                        ]
                    },
                    "message": STRING,
                    "details": _object({"error_code": STRING}, ("error_code",)),
                },
                ("type", "message"),
            ),
        },
        ("type", "error"),
        description="Anthropic's error shape (every Anthropic route, whatever the profile); "
        "the gateway's code in `details.error_code`.",
    ),
}

# Which karta bodies a status can carry (any other status: KartaError).
_KARTA_BY_STATUS = {
    402: ("KartaBudgetExhausted",),
    422: ("KartaValidationFailed", "KartaByokKeyRejected"),
    503: ("KartaError", "KartaProviderKeyMissing"),
}

_STATUS_TEXT = {
    400: "Malformed HTTP: the request could not be parsed (answered before any route, "
    "in the karta shape), or a body aiohttp refused.",
    401: "The credential is missing, malformed, expired, badly signed or revoked "
    "(one body for every cause).",
    402: "A budget cap would be crossed: nothing was sent upstream.",
    403: "Wrong project for a session token, or the credential lacks the scope "
    "(`write` to spend or mint, `read` to read).",
    404: "Unknown project (or another org's), unknown model alias or stored response.",
    408: "The body did not arrive within `limits.body_timeout_seconds`; the connection is "
    "then closed.",
    409: "The project is disabled, the alias has no route, or the `Idempotency-Key`'s "
    "request is still in flight (or was a completed stream).",
    413: "The body is over `limits.max_body_bytes` (decoded) or `limits.max_json_elements`.",
    422: "Validation failed (`param` names the field); or the provider rejected the provider key.",
    429: "A gateway rate limit, an in-flight cap, or the provider's own limit after "
    "retries. `Retry-After` unless the request alone exceeds `tokens_per_minute`.",
    500: "An unexpected error: nothing of it is shown.",
    502: "The upstream failed before the first byte (after retries and fallbacks).",
    503: "The budget store is unreachable (fail closed), every target's circuit is "
    "open, the gateway is shutting down, or the route's provider key is not configured "
    "(`x-should-retry: false`).",
    504: "The upstream timed out before the first byte (after retries and fallbacks).",
}

# The error shapes of a route family, in the order of the oneOf.
_FAMILIES = {
    "Gateway": ("karta", "OpenAIError"),  # the project's (or gateway's) wire profile
    "OpenAI": ("OpenAIError",),  # the Responses routes
    "Anthropic": ("AnthropicError",),  # the Anthropic routes
}


def _error_schema(family: str, status: int) -> Schema:
    names: list[str] = []
    for shape in _FAMILIES[family]:
        if shape == "karta":
            names.extend(_KARTA_BY_STATUS.get(status, ("KartaError",)))
        else:
            names.append(shape)
    if status == 400 and "karta" not in _FAMILIES[family]:
        names.append("KartaError")  # answered before the route is known
    if len(names) == 1:
        return _ref(names[0])
    return {"oneOf": [_ref(n) for n in names]}


def _error_headers(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = dict(_COMMON_HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = _header("WWWAuthenticate")
    if status in (429, 503):
        headers["Retry-After"] = _header("RetryAfter")
    if status == 503:
        headers["x-should-retry"] = _header("XShouldRetry")
    return headers


def _error_responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family in _FAMILIES:
        for status, text in _STATUS_TEXT.items():
            out[f"{family}{status}"] = {
                "description": text,
                "headers": _error_headers(status),
                "content": {JSON: {"schema": _error_schema(family, status)}},
            }
    return out


def _errors(family: str, *statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/{family}{s}"} for s in statuses}


# Every API route can answer these (the server, auth, the in-flight caps).
_API_ERRORS = (400, 401, 403, 404, 429, 500)
# And every route that reads a JSON body these.
_BODY_ERRORS = (408, 409, 413, 422)
# And every route that spends (holds a budget and calls a provider) these.
_SPEND_ERRORS = (402, 502, 503, 504)


# ------------------------------------------------------------------------------ headers


def _header(name: str) -> Schema:
    return {"$ref": f"#/components/headers/{name}"}


_COMMON_HEADERS = {
    "X-Request-Id": _header("XRequestId"),
    "X-Client-Request-Id": _header("XClientRequestId"),
}

_BUDGET_HEADERS = {
    **{
        f"X-Budget-{kind}-{unit}": _header(f"XBudget{kind}{unit}")
        for kind in ("Remaining", "Limit", "Reset")
        for unit in ("Tokens", "USD")
    },
    "X-Budget-Shrunk-Max-Tokens": _header("XBudgetShrunkMaxTokens"),
    **{
        f"x-ratelimit-{kind}-{unit}": _header(f"XRatelimit{kind.title()}{unit.title()}")
        for kind in ("limit", "remaining", "reset")
        for unit in ("requests", "tokens")
    },
}

_REPLAY_HEADERS = {
    "Idempotent-Replayed": _header("IdempotentReplayed"),
    "X-Original-Request-Id": _header("XOriginalRequestId"),
}


def _headers() -> dict[str, Any]:
    def h(description: str, schema: Schema | None = None, required: bool = False) -> Schema:
        out: Schema = {"description": description, "schema": schema or STRING}
        if required:
            out["required"] = True
        return out

    decimal: Schema = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{6}$"}
    digits: Schema = {"type": "string", "pattern": "^[0-9]+$"}
    stamp: Schema = {"type": "string", "format": "date-time"}
    duration: Schema = {"type": "string", "pattern": "^([0-9]+ms|([0-9]+m)?[0-9]+s)$"}
    out = {
        "XRequestId": h("The gateway's own id of this request (every answer).", required=True),
        "XClientRequestId": h(
            "The client's `X-Request-Id`, echoed when it was kept (1 to 128 of `A-Za-z0-9._:-`)."
        ),
        "RetryAfter": h("Seconds to wait before a retry.", digits),
        "WWWAuthenticate": h("`Bearer`.", {"const": "Bearer"}),
        "XShouldRetry": h(
            "`false` on a 503 that only a restart can fix (provider key not configured): "
            "the official SDKs do not retry it.",
            {"const": "false"},
        ),
        "IdempotentReplayed": h(
            "`true`: this is the stored answer of the request with the same "
            "`Idempotency-Key` (not forwarded, not billed).",
            {"const": "true"},
        ),
        "XOriginalRequestId": h("With a replay: the request id of the answer replayed."),
        "XKartaEstimate": h(
            "`upper-bound`: the count is a bound, not the provider's count.",
            {"const": "upper-bound"},
        ),
        "XBudgetShrunkMaxTokens": h(
            "Shrink instead of refuse: the output ceiling the request was admitted with "
            "(lower than asked, to fit a cap).",
            digits,
        ),
    }
    caps = {
        "Tokens": ("the token cap with the least room", digits),
        "USD": ("the cost cap with the least room, in dollars (rounded down)", decimal),
    }
    for unit, (what, schema) in caps.items():
        out[f"XBudgetRemaining{unit}"] = h(f"What is left of {what}.", schema)
        out[f"XBudgetLimit{unit}"] = h(f"The limit of {what}.", schema)
        out[f"XBudgetReset{unit}"] = h(
            f"When the window of {what} resets (none for a lifetime cap).", stamp
        )
    for unit in ("Requests", "Tokens"):
        what = f"the gateway's {unit.lower()} per minute limit (the tightest of the project's and the key's)"
        out[f"XRatelimitLimit{unit}"] = h(f"The limit of {what}.", digits)
        out[f"XRatelimitRemaining{unit}"] = h(f"What is left of {what}.", digits)
        out[f"XRatelimitReset{unit}"] = h(
            f"When {what} is full again (`250ms`, `48s`, `1m1s`).", duration
        )
    return out


# ------------------------------------------------------------------------- chat bodies


def _chat_schemas() -> dict[str, Schema]:
    text_part = _object(
        {"type": {"const": "text"}, "text": STRING, "cache_control": ANY_OBJECT}, ("type", "text")
    )
    image_part = _object(
        {
            "type": {"const": "image_url"},
            "image_url": _object(
                {"url": STRING, "detail": {"enum": ["auto", "low", "high"]}}, ("url",)
            ),
        },
        ("type", "image_url"),
    )
    file_part = _object(
        {
            "type": {"const": "file"},
            "file": _object({"file_data": STRING, "file_id": STRING, "filename": STRING}),
        },
        ("type", "file"),
        description="Reserves the model's context window (`prices.<model>.context_tokens`); "
        "without one, 422.",
    )
    refusal_part = _object({"type": {"const": "refusal"}, "refusal": STRING}, ("type", "refusal"))
    tool_call = _object(
        {
            "id": STRING,
            "type": {"const": "function"},
            "function": _object({"name": STRING, "arguments": STRING}, ("name", "arguments")),
        },
        ("id", "type", "function"),
    )
    content: Schema = {"anyOf": [STRING, {"type": "array", "items": _ref("ChatContentPart")}]}
    message = {
        "oneOf": [
            _object(
                {
                    "role": {"enum": ["system", "developer", "user"]},
                    "content": content,
                    "name": STRING,
                },
                ("role", "content"),
            ),
            {
                **_object(
                    {
                        "role": {"const": "assistant"},
                        "content": {"anyOf": [*content["anyOf"], {"type": "null"}]},
                        "refusal": _nullable(STRING),
                        "name": STRING,
                        "tool_calls": {"type": "array", "items": tool_call},
                        "function_call": ANY_OBJECT,
                    },
                    ("role",),
                    description="`content` may be null or left out on a turn that only "
                    "calls tools.",
                ),
                "anyOf": [
                    {"required": ["content"]},
                    {"required": ["tool_calls"], "properties": {"tool_calls": {"minItems": 1}}},
                    {"required": ["function_call"]},
                ],
            },
            _object(
                {"role": {"const": "tool"}, "content": content, "tool_call_id": STRING},
                ("role", "content", "tool_call_id"),
            ),
            _object(
                {"role": {"const": "function"}, "content": _nullable(STRING), "name": STRING},
                ("role", "content"),
                description="Legacy function calling (refused on Anthropic routes).",
            ),
        ],
        "description": "Audio (`audio`, `input_audio` parts) is refused (422).",
    }
    function = _object(
        {"name": NONEMPTY, "description": STRING, "parameters": ANY_OBJECT, "strict": BOOLEAN},
        ("name",),
    )
    tool = _object({"type": {"const": "function"}, "function": function}, ("type", "function"))
    response_format = {
        "oneOf": [
            _object({"type": {"const": "text"}}, ("type",)),
            _object({"type": {"const": "json_object"}}, ("type",)),
            _object(
                {
                    "type": {"const": "json_schema"},
                    "json_schema": _object(
                        {
                            "name": NONEMPTY,
                            "description": STRING,
                            "schema": ANY_OBJECT,
                            "strict": BOOLEAN,
                        },
                        ("name",),
                    ),
                },
                ("type", "json_schema"),
            ),
        ]
    }
    request = _object(
        {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "A model alias of the project (default: its `default_model`).",
            },
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
            "stream": BOOLEAN,
            "stream_options": _object(
                {name: BOOLEAN for name in sorted(STREAM_OPTIONS)},
                closed=True,
                description="The gateway always asks the provider for the usage; the usage "
                "chunk is sent to the client only with `include_usage`.",
            ),
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "Clamped to the project's `max_output_tokens` (the ceiling "
                "reserved and sent upstream).",
            },
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
            "temperature": _number(0, 2),
            "top_p": _number(0, 1),
            "presence_penalty": _number(-2, 2),
            "frequency_penalty": _number(-2, 2),
            "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
            "stop": {
                "anyOf": [STRING, {"type": "array", "maxItems": 4, "items": STRING}],
            },
            "tools": {"type": "array", "items": tool},
            "tool_choice": {
                "anyOf": [
                    {"enum": ["none", "auto", "required"]},
                    _object(
                        {
                            "type": {"const": "function"},
                            "function": _object({"name": NONEMPTY}, ("name",)),
                        },
                        ("type", "function"),
                    ),
                ]
            },
            "parallel_tool_calls": BOOLEAN,
            "response_format": response_format,
            "user": STRING,
            "logprobs": BOOLEAN,
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
            "logit_bias": {"type": "object", "additionalProperties": {"type": "number"}},
            "metadata": {"type": "object", "additionalProperties": STRING},
            "service_tier": {
                "type": "string",
                "not": {"const": "priority"},
                "description": "`priority` is refused (422): billed above the price table.",
            },
            "audio": {
                "type": "null",
                "description": "Audio output is refused (422): audio tokens are priced apart.",
            },
            "modalities": {
                "type": "array",
                "items": {"const": "text"},
                "description": "Audio output is refused (422): audio tokens are priced apart.",
            },
            "reasoning_effort": STRING,
            "verbosity": STRING,
            "store": BOOLEAN,
            "safety_identifier": STRING,
            "prompt_cache_key": STRING,
            "functions": {
                "type": "array",
                "items": ANY_OBJECT,
                "description": "Legacy function calling (refused on Anthropic routes).",
            },
            "function_call": {"anyOf": [STRING, ANY_OBJECT]},
        },
        ("messages",),
        closed=True,
        description="Only these parameters go upstream (what is forwarded is what was "
        "reserved): any other is refused with 422 naming it, unless the operator allowed "
        "it for the route's provider (`providers.<name>.extra_params`). Audio input and "
        "output are refused (422).",
    )
    usage_details = {
        "prompt_tokens_details": _object(
            {"cached_tokens": COUNT, "cache_creation_tokens": COUNT}, ("cached_tokens",)
        ),
        "completion_tokens_details": _object({"reasoning_tokens": COUNT}, ("reasoning_tokens",)),
    }
    openai_usage = _object(
        {
            "prompt_tokens": COUNT,
            "completion_tokens": COUNT,
            "total_tokens": COUNT,
            **usage_details,
        },
        ("prompt_tokens", "completion_tokens", "total_tokens"),
    )
    karta_usage = _object(
        {
            "input_tokens": COUNT,
            "output_tokens": COUNT,
            "total_tokens": COUNT,
            "prompt_tokens": COUNT,
            "completion_tokens": COUNT,
            **usage_details,
        },
        ("input_tokens", "output_tokens", "total_tokens", "prompt_tokens", "completion_tokens"),
        description="What was billed: both the documented and OpenAI's names.",
    )
    answer_message = _object(
        {
            "role": {"const": "assistant"},
            "content": _nullable(STRING),
            "refusal": _nullable(STRING),
            "tool_calls": {"type": "array", "items": tool_call},
        },
        ("role",),
    )
    choice = _object(
        {
            "index": COUNT,
            "message": answer_message,
            "finish_reason": _nullable(STRING),
        },
        ("index", "message"),
    )

    def completion(obj: str, usage: str, profile: str) -> Schema:
        return _object(
            {
                "id": STRING,
                "object": {"const": obj},
                "created": INTEGER,
                "model": {"type": "string", "description": "The alias asked for."},
                "choices": {"type": "array", "items": choice},
                "usage": _ref(usage),
            },
            ("id", "object", "model", "choices", "usage"),
            description=f"A chat completion, {profile} profile.",
        )

    return {
        "ChatContentPart": {"oneOf": [text_part, image_part, file_part, refusal_part]},
        "ChatMessage": message,
        "ChatCompletionRequest": request,
        "KartaUsage": karta_usage,
        "OpenAIUsage": openai_usage,
        "KartaChatCompletion": completion("text_completion", "KartaUsage", "karta"),
        "OpenAIChatCompletion": completion("chat.completion", "OpenAIUsage", "openai"),
    }


# -------------------------------------------------------------------- responses bodies


def _responses_schemas() -> dict[str, Schema]:
    input_text = _object({"type": {"const": "input_text"}, "text": STRING}, ("type", "text"))
    parts = {
        "oneOf": [
            input_text,
            _object(
                {
                    "type": {"const": "input_image"},
                    "image_url": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A URL or a data: URL (file ids are refused).",
                    },
                    "detail": {"enum": ["auto", "low", "high"]},
                },
                ("type", "image_url"),
            ),
            _object(
                {"type": {"const": "input_file"}, "file_data": NONEMPTY, "filename": STRING},
                ("type", "file_data"),
                description="The file's bytes (file ids and URLs are refused).",
            ),
            _object({"type": {"const": "output_text"}, "text": STRING}, ("type", "text")),
            _object({"type": {"const": "refusal"}, "refusal": STRING}, ("type", "refusal")),
        ],
        "description": "`input_text`, `input_image`, `input_file` in user turns; "
        "`input_text` in system and developer turns; `output_text` and `refusal` in "
        "assistant turns.",
    }
    message = _object(
        {
            "type": {"const": "message"},
            "role": {"enum": ["user", "assistant", "system", "developer"]},
            "content": {"anyOf": [STRING, {"type": "array", "items": parts}]},
        },
        ("role", "content"),
    )
    function_call = _object(
        {
            "type": {"const": "function_call"},
            "call_id": NONEMPTY,
            "name": NONEMPTY,
            "arguments": STRING,
        },
        ("type", "call_id", "name", "arguments"),
    )
    function_output = _object(
        {
            "type": {"const": "function_call_output"},
            "call_id": NONEMPTY,
            "output": {"anyOf": [STRING, {"type": "array", "items": input_text}]},
        },
        ("type", "call_id", "output"),
    )
    reasoning = _object(
        {"type": {"const": "reasoning"}},
        ("type",),
        description="An earlier answer's reasoning: accepted and dropped.",
    )
    tool = _object(
        {
            "type": {"const": "function"},
            "name": NONEMPTY,
            "description": STRING,
            "parameters": ANY_OBJECT,
            "strict": BOOLEAN,
        },
        ("type", "name"),
        description="Function tools only: hosted tools (web search, file search, code "
        "interpreter, computer use, image generation, MCP, shells) are refused with 422.",
    )
    text_format = {
        "oneOf": [
            _object({"type": {"const": "text"}}, ("type",)),
            _object({"type": {"const": "json_object"}}, ("type",)),
            _object(
                {
                    "type": {"const": "json_schema"},
                    "name": NONEMPTY,
                    "schema": ANY_OBJECT,
                    "description": STRING,
                    "strict": BOOLEAN,
                },
                ("type", "name", "schema"),
            ),
        ]
    }
    request = {
        **_object(
            {
                "model": NONEMPTY,
                "input": {
                    "anyOf": [
                        STRING,
                        {
                            "type": "array",
                            "items": {
                                "anyOf": [message, function_call, function_output, reasoning]
                            },
                        },
                    ],
                    "description": "Required (non-empty) unless `previous_response_id` is set.",
                },
                "instructions": STRING,
                "tools": {"type": "array", "items": tool},
                "tool_choice": {
                    "anyOf": [
                        {"enum": ["auto", "none", "required"]},
                        _object(
                            {"type": {"const": "function"}, "name": NONEMPTY}, ("type", "name")
                        ),
                    ]
                },
                "text": _object({"format": text_format, "verbosity": STRING}, closed=True),
                "max_output_tokens": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Clamped to the project's ceiling; reasoning tokens count.",
                },
                "temperature": _number(0, 2),
                "top_p": _number(0, 1),
                "parallel_tool_calls": BOOLEAN,
                "reasoning": _object(
                    {"effort": NONEMPTY, "summary": STRING, "generate_summary": STRING}
                ),
                "user": STRING,
                "safety_identifier": STRING,
                "metadata": {
                    "type": "object",
                    "maxProperties": 16,
                    "propertyNames": {"maxLength": 64},
                    "additionalProperties": {"type": "string", "maxLength": 512},
                },
                "store": {
                    "type": "boolean",
                    "description": "Default true: the response is kept for "
                    "`limits.stored_response_ttl_seconds`, for `previous_response_id` and "
                    "`GET responses/{response_id}`.",
                },
                "stream": BOOLEAN,
                "stream_options": _object({"include_obfuscation": BOOLEAN}, closed=True),
                "previous_response_id": {
                    "type": "string",
                    "minLength": 1,
                    "description": "A stored response of this project and credential: its "
                    "turns are replayed ahead of the input (and counted in its bound). "
                    "Unknown, expired or another credential's: 404.",
                },
                "truncation": {"enum": ["auto", "disabled"]},
                "include": {"type": "array", "items": {"enum": sorted(HARMLESS_INCLUDES)}},
                "service_tier": {"type": "string", "not": {"const": "priority"}},
                "prompt_cache_key": STRING,
                "background": {
                    "const": False,
                    "description": "Background responses are refused (422).",
                },
            },
            closed=True,
            description="OpenAI's Responses create body, translated to chat completions. "
            "Stored prompts, conversations, logprobs, audio and file ids are refused (422).",
        ),
        "anyOf": [{"required": ["input"]}, {"required": ["previous_response_id"]}],
        # A tool_choice that asks for a tool needs tools (422 otherwise).
        "dependentSchemas": {
            "tool_choice": {
                "if": {
                    "properties": {
                        "tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}
                    }
                },
                "then": {"required": ["tools"], "properties": {"tools": {"minItems": 1}}},
            }
        },
    }
    output_text = _object(
        {
            "type": {"const": "output_text"},
            "text": STRING,
            "annotations": {"type": "array"},
            "logprobs": {"type": "array"},
        },
        ("type", "text"),
    )
    refusal = _object({"type": {"const": "refusal"}, "refusal": STRING}, ("type", "refusal"))
    item_status = {"enum": ["in_progress", "completed", "incomplete"]}
    output_item = {
        "oneOf": [
            _object(
                {
                    "id": STRING,
                    "type": {"const": "message"},
                    "status": item_status,
                    "role": {"const": "assistant"},
                    "content": {"type": "array", "items": {"oneOf": [output_text, refusal]}},
                },
                ("id", "type", "status", "role", "content"),
            ),
            _object(
                {
                    "id": STRING,
                    "type": {"const": "reasoning"},
                    "summary": {"type": "array"},
                    "content": {"type": "array"},
                    "status": item_status,
                },
                ("id", "type"),
            ),
            _object(
                {
                    "id": STRING,
                    "type": {"const": "function_call"},
                    "status": item_status,
                    "call_id": STRING,
                    "name": STRING,
                    "arguments": STRING,
                },
                ("id", "type", "call_id", "name", "arguments"),
            ),
        ]
    }
    usage = _object(
        {
            "input_tokens": COUNT,
            "input_tokens_details": _object({"cached_tokens": COUNT, "cache_write_tokens": COUNT}),
            "output_tokens": COUNT,
            "output_tokens_details": _object({"reasoning_tokens": COUNT}),
            "total_tokens": COUNT,
        },
        ("input_tokens", "output_tokens", "total_tokens"),
    )
    response = _object(
        {
            "id": STRING,
            "object": {"const": "response"},
            "created_at": INTEGER,
            "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
            "background": BOOLEAN,
            "completed_at": _nullable(INTEGER),
            "error": _nullable(_object({"code": STRING, "message": STRING}, ("code", "message"))),
            "incomplete_details": _nullable(_object({"reason": STRING})),
            "instructions": _nullable(STRING),
            "max_output_tokens": _nullable(INTEGER),
            "model": STRING,
            "output": {"type": "array", "items": output_item},
            "parallel_tool_calls": BOOLEAN,
            "previous_response_id": _nullable(STRING),
            "reasoning": ANY_OBJECT,
            "service_tier": _nullable(STRING),
            "store": BOOLEAN,
            "temperature": _nullable({"type": "number"}),
            "text": ANY_OBJECT,
            "tool_choice": {"anyOf": [STRING, ANY_OBJECT]},
            "tools": {"type": "array"},
            "top_p": _nullable({"type": "number"}),
            "truncation": STRING,
            "usage": _nullable(usage),
            "user": _nullable(STRING),
            "metadata": {"type": "object", "additionalProperties": STRING},
        },
        ("id", "object", "created_at", "status", "model", "output"),
        description="A Responses `response` object.",
    )
    return {"ResponsesRequest": request, "Response": response}


# --------------------------------------------------------------------- messages bodies

# A tool_choice that asks for a tool needs tools (422 otherwise).
_NEEDS_TOOLS: Schema = {
    "tool_choice": {
        "if": {"properties": {"tool_choice": {"properties": {"type": {"enum": ["any", "tool"]}}}}},
        "then": {"required": ["tools"], "properties": {"tools": {"minItems": 1}}},
    }
}


def _messages_schemas() -> dict[str, Schema]:
    cache_control = _object(
        {"type": {"const": "ephemeral"}, "ttl": {"enum": ["5m", "1h"]}},
        ("type",),
        closed=True,
        description="Accepted; dropped on chat routes (it changes the cost, not the answer).",
    )
    text = _object(
        {
            "type": {"const": "text"},
            "text": NONEMPTY,
            "cache_control": cache_control,
            "citations": {"type": ["array", "null"]},
        },
        ("type", "text"),
        closed=True,
    )
    image = _object(
        {
            "type": {"const": "image"},
            "source": {
                "oneOf": [
                    _object(
                        {
                            "type": {"const": "base64"},
                            "media_type": {
                                "enum": ["image/jpeg", "image/png", "image/gif", "image/webp"]
                            },
                            "data": STRING,
                        },
                        ("type", "media_type", "data"),
                        closed=True,
                    ),
                    _object(
                        {
                            "type": {"const": "url"},
                            "url": {"type": "string", "pattern": "^https?://"},
                        },
                        ("type", "url"),
                        closed=True,
                    ),
                ]
            },
            "cache_control": cache_control,
        },
        ("type", "source"),
        closed=True,
    )
    document = _object(
        {
            "type": {"const": "document"},
            "source": {
                "oneOf": [
                    _object(
                        {
                            "type": {"const": "base64"},
                            "media_type": {"const": "application/pdf"},
                            "data": STRING,
                        },
                        ("type", "media_type", "data"),
                        closed=True,
                    ),
                    _object(
                        {
                            "type": {"const": "text"},
                            "media_type": {"const": "text/plain"},
                            "data": STRING,
                        },
                        ("type", "media_type", "data"),
                        closed=True,
                    ),
                ]
            },
            "title": STRING,
            "context": STRING,
            "citations": _object(
                {"enabled": {"const": False}},
                description="Citations are refused (422).",
            ),
            "cache_control": cache_control,
        },
        ("type", "source"),
        closed=True,
        description="A base64 PDF (reserves the model's context window) or plain text.",
    )
    tool_result = _object(
        {
            "type": {"const": "tool_result"},
            "tool_use_id": STRING,
            "content": {
                "anyOf": [
                    STRING,
                    {"type": "array", "items": {"oneOf": [text, image, document]}},
                ]
            },
            "is_error": BOOLEAN,
            "cache_control": cache_control,
        },
        ("type", "tool_use_id"),
        closed=True,
    )
    tool_use = _object(
        {
            "type": {"const": "tool_use"},
            "id": STRING,
            "name": STRING,
            "input": ANY_OBJECT,
            "cache_control": cache_control,
            "caller": _object({"type": {"const": "direct"}}, ("type",)),
        },
        ("type", "id", "name"),
        closed=True,
    )
    thinking = _object(
        {"type": {"const": "thinking"}, "thinking": STRING, "signature": STRING},
        ("type", "thinking"),
        closed=True,
        description="An earlier turn's thinking: dropped on chat routes.",
    )
    redacted = _object(
        {"type": {"const": "redacted_thinking"}, "data": STRING}, ("type", "data"), closed=True
    )
    message = {
        "oneOf": [
            _object(
                {
                    "role": {"const": "user"},
                    "content": {
                        "anyOf": [
                            NONEMPTY,
                            {
                                "type": "array",
                                "minItems": 1,
                                "items": {"oneOf": [text, image, document, tool_result]},
                            },
                        ]
                    },
                },
                ("role", "content"),
                closed=True,
            ),
            _object(
                {
                    "role": {"const": "assistant"},
                    "content": {
                        "anyOf": [
                            NONEMPTY,
                            {
                                "type": "array",
                                "minItems": 1,
                                "items": {"oneOf": [text, tool_use, thinking, redacted]},
                            },
                        ]
                    },
                },
                ("role", "content"),
                closed=True,
            ),
        ],
        "description": "Empty turns are accepted, but not a conversation with no content.",
    }
    tool = _object(
        {
            "type": {"const": "custom"},
            "name": STRING,
            "description": STRING,
            "input_schema": _object({"type": {"const": "object"}}, ("type",)),
            "cache_control": cache_control,
            "strict": BOOLEAN,
            "eager_input_streaming": BOOLEAN,
        },
        ("name", "input_schema"),
        closed=True,
        description="Client tools only: server and Anthropic-defined tools (web search, "
        "code execution, computer use, text editor, bash, ...) are refused (422).",
    )
    tool_choice = {
        "oneOf": [
            _object(
                {"type": {"enum": ["auto", "any"]}, "disable_parallel_tool_use": BOOLEAN},
                ("type",),
                closed=True,
            ),
            _object(
                {
                    "type": {"const": "tool"},
                    "name": STRING,
                    "disable_parallel_tool_use": BOOLEAN,
                },
                ("type", "name"),
                closed=True,
            ),
            _object({"type": {"const": "none"}}, ("type",), closed=True),
        ]
    }
    thinking_config = {
        "oneOf": [
            _object(
                {
                    "type": {"const": "enabled"},
                    "budget_tokens": {
                        "type": "integer",
                        "minimum": 1024,
                        "description": "Below max_tokens; mapped to a reasoning effort.",
                    },
                    "display": STRING,
                },
                ("type", "budget_tokens"),
                closed=True,
            ),
            _object({"type": {"const": "disabled"}}, ("type",), closed=True),
            _object({"type": {"const": "adaptive"}, "display": STRING}, ("type",), closed=True),
        ]
    }
    output_config = _object(
        {
            "effort": {
                "enum": ["low", "medium", "high", "xhigh", "max"],
                "description": "`xhigh` and `max` are refused on chat routes (422).",
            },
            "format": _object(
                {"type": {"const": "json_schema"}, "schema": ANY_OBJECT},
                ("type", "schema"),
                closed=True,
            ),
        },
        closed=True,
    )
    system = {
        "anyOf": [
            STRING,
            {
                "type": "array",
                "items": text,
            },
        ]
    }
    prompt: dict[str, Schema] = {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "A model alias of the project.",
        },
        "messages": {"type": "array", "minItems": 1, "items": message},
        "system": system,
        "tools": {"type": "array", "items": tool},
        "tool_choice": tool_choice,
        "thinking": thinking_config,
        "cache_control": cache_control,
        "output_config": output_config,
    }
    create = _object(
        {
            **prompt,
            "max_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "Clamped to the project's ceiling.",
            },
            "metadata": _object({"user_id": STRING}, closed=True),
            "stop_sequences": {
                "type": "array",
                "maxItems": 4,
                "items": {"type": "string", "pattern": r"\S"},
            },
            "stream": BOOLEAN,
            "temperature": _number(0, 1),
            "top_p": _number(0, 1),
            "top_k": {
                "type": "integer",
                "minimum": 0,
                "description": "Refused on chat routes (422): no equivalent there.",
            },
            "service_tier": {"enum": ["auto", "standard_only"]},
        },
        ("model", "max_tokens", "messages"),
        closed=True,
        description="Anthropic's Messages create body, translated to chat completions. "
        "`mcp_servers` and `container` are refused (422).",
    )
    create["dependentSchemas"] = _NEEDS_TOOLS

    count = _object(prompt, ("model", "messages"), closed=True)
    count["dependentSchemas"] = _NEEDS_TOOLS
    block = {
        "oneOf": [
            _object({"type": {"const": "text"}, "text": STRING}, ("type", "text")),
            _object(
                {"type": {"const": "thinking"}, "thinking": STRING, "signature": STRING},
                ("type", "thinking", "signature"),
            ),
            _object(
                {
                    "type": {"const": "tool_use"},
                    "id": STRING,
                    "name": STRING,
                    "input": ANY_OBJECT,
                },
                ("type", "id", "name", "input"),
            ),
        ]
    }
    usage = _object(
        {
            "input_tokens": COUNT,
            "cache_creation_input_tokens": COUNT,
            "cache_read_input_tokens": COUNT,
            "output_tokens": COUNT,
            "output_tokens_details": _object({"thinking_tokens": COUNT}),
        },
        ("input_tokens", "output_tokens"),
    )
    answer = _object(
        {
            "id": STRING,
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "model": STRING,
            "content": {"type": "array", "items": block},
            "stop_reason": {
                "enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]
            },
            "stop_sequence": _nullable(STRING),
            "usage": usage,
        },
        ("id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"),
        description="An Anthropic `Message`.",
    )
    return {
        "MessagesRequest": create,
        "CountTokensRequest": count,
        "Message": answer,
        "CountTokens": _object(
            {"input_tokens": COUNT},
            ("input_tokens",),
            description="An upper bound of the prompt's tokens (never billed).",
        ),
    }


# ------------------------------------------------------------------- the other bodies


def _other_schemas() -> dict[str, Schema]:
    token_ids = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID},
    }
    embeddings = _object(
        {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "An alias of `kind: embedding` (a chat alias: 422).",
            },
            "input": {
                "anyOf": [
                    NONEMPTY,
                    token_ids,
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_ITEMS,
                        "items": {"anyOf": [NONEMPTY, token_ids]},
                    },
                ]
            },
            "dimensions": {"type": "integer", "minimum": 1, "maximum": 65536},
            "encoding_format": {"enum": ["float", "base64"]},
            "user": STRING,
        },
        ("input",),
        closed=True,
        description="Input-only budget: the worst case is the input's UTF-8 bytes (token "
        "ids: their count) plus 2 per item.",
    )
    embedding_list = _object(
        {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": _object(
                    {
                        "object": {"const": "embedding"},
                        "index": COUNT,
                        "embedding": {
                            "anyOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64"},
                            ]
                        },
                    },
                    ("object", "index", "embedding"),
                ),
            },
            "model": STRING,
            "usage": _object(
                {"prompt_tokens": COUNT, "total_tokens": COUNT},
                ("prompt_tokens", "total_tokens"),
            ),
        },
        ("object", "data", "model", "usage"),
    )
    model = _object(
        {
            "id": STRING,
            "object": {"const": "model"},
            "created": INTEGER,
            "owned_by": {"const": "karta"},
        },
        ("id", "object", "created", "owned_by"),
        description="A model alias of the project (`created`: when the config was loaded).",
    )
    anthropic_model = _object(
        {
            "type": {"const": "model"},
            "id": STRING,
            "display_name": STRING,
            "created_at": {"type": "string", "format": "date-time"},
        },
        ("type", "id", "display_name", "created_at"),
    )
    dimension = _object(
        {"used": COUNT, "reserved": COUNT, "cap": _nullable(COUNT)},
        ("used", "reserved", "cap"),
    )
    counter = _object(
        {
            "scope": {"enum": ["project", "key", "user", "org"]},
            "window": {"enum": ["day", "month", "lifetime"]},
            "window_id": STRING,
            "resets_at": _nullable({"type": "string", "format": "date-time"}),
            "dimensions": _object(
                {
                    name: dimension
                    for name in ("input_tokens", "output_tokens", "total_tokens", "cost_nano_usd")
                },
                ("input_tokens", "output_tokens", "total_tokens", "cost_nano_usd"),
            ),
            "id": {"type": "string", "description": "The key id or org (key and org scopes)."},
            "user": {"type": "string", "description": "The end user (user scope)."},
        },
        ("scope", "window", "window_id", "resets_at", "dimensions"),
    )
    return {
        "EmbeddingsRequest": embeddings,
        "EmbeddingList": embedding_list,
        "Model": model,
        "ModelList": _object(
            {"object": {"const": "list"}, "data": {"type": "array", "items": model}},
            ("object", "data"),
        ),
        "AnthropicModelList": _object(
            {
                "data": {"type": "array", "items": anthropic_model},
                "has_more": {"const": False},
                "first_id": _nullable(STRING),
                "last_id": _nullable(STRING),
            },
            ("data", "has_more", "first_id", "last_id"),
        ),
        "SessionTokenRequest": _object(
            {
                "sub": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "maxLength": 256,
                    "description": "The end user the token is for (its per-user caps apply).",
                },
                "ttl_seconds": {
                    "type": "integer",
                    "minimum": 30,
                    "description": "Default `session_tokens.default_ttl_seconds` (900), at "
                    "most `session_tokens.max_ttl_seconds` (3600; over it: 422).",
                },
            },
            description="An empty body takes the defaults.",
        ),
        "SessionToken": _object(
            {
                "token": STRING,
                "token_type": {"const": "Bearer"},
                "project_id": STRING,
                "sub": _nullable(STRING),
                "expires_at": INTEGER,
            },
            ("token", "token_type", "project_id", "sub", "expires_at"),
        ),
        "Usage": _object(
            {
                "project": STRING,
                "project_id": STRING,
                "org": STRING,
                "counters": {"type": "array", "items": counter},
            },
            ("project", "project_id", "org", "counters"),
            description="Per window and dimension: used, reserved in flight and cap (money "
            "in nano-USD), for the project, the caller's key and user, and the org.",
        ),
        "Health": _object({"status": {"const": "ok"}}, ("status",)),
        "Ready": _object({"status": {"const": "ready"}}, ("status",)),
        "NotReady": _object(
            {
                "detail": {"const": "not ready"},
                "checks": _object(
                    {"budget_store": {"enum": ["ok", "unreachable"]}, "accepting": BOOLEAN},
                    ("budget_store", "accepting"),
                ),
            },
            ("detail", "checks"),
        ),
        "Reloaded": _object(
            {
                "reloaded": {"const": True},
                "projects": COUNT,
                "workers": {"const": "all", "description": "With --workers: every worker."},
            },
            ("reloaded", "projects"),
        ),
        "ConfigInvalid": _object(
            {
                "error": {"const": "config_invalid"},
                "problems": {
                    "type": "array",
                    "items": _object(
                        {"file": STRING, "path": STRING, "reason": STRING},
                        ("file", "path", "reason"),
                    ),
                },
            },
            ("error", "problems"),
        ),
    }


# ------------------------------------------------------------------------------ streams


def _json_data(schema: Schema) -> Schema:
    """An SSE ``data`` field holding JSON."""
    return {"type": "string", "contentMediaType": JSON, "contentSchema": schema}


def _event(name: Schema, data: Schema) -> Schema:
    return _object({"event": name, "data": data, "id": STRING}, ("event", "data"))


def _typed_event(kind: str, fields: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """An event whose name is its data's ``type``."""
    return _event(
        {"const": kind},
        _json_data(_object({"type": {"const": kind}, **fields}, ("type", *required))),
    )


_RESPONSE_LIFECYCLE = (
    "response.created",
    "response.in_progress",
    "response.completed",
    "response.incomplete",
    "response.failed",
)
_RESPONSE_ITEM_EVENTS = (
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.refusal.delta",
    "response.refusal.done",
    "response.reasoning_text.delta",
    "response.reasoning_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
)


def _stream_schemas() -> dict[str, Schema]:
    chunk = _object(
        {
            "id": STRING,
            "object": {"const": "chat.completion.chunk"},
            "created": INTEGER,
            "model": {"type": "string", "description": "The alias asked for."},
            "choices": {
                "type": "array",
                "items": _object(
                    {"index": COUNT, "delta": ANY_OBJECT, "finish_reason": _nullable(STRING)},
                    ("index",),
                ),
            },
            "usage": _nullable({"anyOf": [_ref("KartaUsage"), _ref("OpenAIUsage")]}),
        },
        ("id", "object", "model", "choices"),
    )
    karta_error = _object(
        {
            "type": {"const": "error"},
            "data": _object(
                {"code": STRING, "provider": STRING, "message": STRING},
                ("code", "provider", "message"),
            ),
            "error": _object(
                {"message": STRING, "type": STRING, "code": STRING}, ("message", "type", "code")
            ),
        },
        ("type", "data", "error"),
    )
    openai_error = _object(
        {
            "error": _object(
                {"message": STRING, "type": STRING, "code": STRING, "provider": STRING},
                ("message", "type", "code"),
            )
        },
        ("error",),
    )
    sequenced = {"sequence_number": COUNT}
    responses_events = [
        _typed_event(
            kind, {**sequenced, "response": _ref("Response")}, ("sequence_number", "response")
        )
        for kind in _RESPONSE_LIFECYCLE
    ]
    responses_events += [
        _typed_event(
            kind, {**sequenced, "output_index": COUNT}, ("sequence_number", "output_index")
        )
        for kind in _RESPONSE_ITEM_EVENTS
    ]
    responses_events.append(
        _typed_event(
            "error",
            {**sequenced, "code": STRING, "message": STRING, "param": _nullable(STRING)},
            ("sequence_number", "code", "message"),
        )
    )
    index = {"index": COUNT}
    messages_events = [
        _typed_event("message_start", {"message": ANY_OBJECT}, ("message",)),
        _typed_event(
            "content_block_start",
            {**index, "content_block": ANY_OBJECT},
            ("index", "content_block"),
        ),
        _typed_event("content_block_delta", {**index, "delta": ANY_OBJECT}, ("index", "delta")),
        _typed_event("content_block_stop", index, ("index",)),
        _typed_event(
            "message_delta",
            {
                "delta": _object(
                    {"stop_reason": STRING, "stop_sequence": _nullable(STRING)}, ("stop_reason",)
                ),
                "usage": ANY_OBJECT,
            },
            ("delta", "usage"),
        ),
        _typed_event("message_stop", {}),
        _typed_event("ping", {}),
        _typed_event(
            "error",
            {"error": _object({"type": STRING, "message": STRING}, ("type", "message"))},
            ("error",),
        ),
    ]
    return {
        "ChatCompletionChunk": chunk,
        "ChatStreamEvent": {
            "anyOf": [
                _event({"enum": ["chunk", "message"]}, _json_data(_ref("ChatCompletionChunk"))),
                _event({"enum": ["[DONE]", "message"]}, {"const": "[DONE]"}),
                _event(
                    {"enum": ["error", "message"]},
                    _json_data({"anyOf": [karta_error, openai_error]}),
                ),
            ],
            "description": "One event of a chat stream: `event: chunk` (karta) or a "
            "data-only frame (openai: the event is `message`).",
        },
        "ResponsesStreamEvent": {"anyOf": responses_events},
        "MessagesStreamEvent": {"anyOf": messages_events},
    }


# ------------------------------------------------------------------------------- paths

_API_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
_PROJECT = {"$ref": "#/components/parameters/ProjectRef"}
_CLIENT_ID = {"$ref": "#/components/parameters/ClientRequestId"}
_IDEMPOTENCY = {"$ref": "#/components/parameters/IdempotencyKey"}


def _ok(
    description: str,
    content: dict[str, Any],
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**_COMMON_HEADERS, **(headers or {})},
        "content": content,
    }


def _json(schema: Schema) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _stream(event: str, description: str) -> dict[str, Any]:
    """A text/event-stream answer: ``schema`` describes each event (what OpenAPI 3.2
    calls ``itemSchema``), its ``data`` JSON by ``contentSchema``."""
    return {SSE: {"schema": {**_ref(event), "description": description}}}


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": _json(_ref(schema))}


def _api(
    summary: str,
    operation_id: str,
    tag: str,
    responses: dict[str, Any],
    *,
    description: str = "",
    body: dict[str, Any] | None = None,
    idempotent: bool = False,
    parameters: tuple[Schema, ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "tags": [tag],
        "security": _API_SECURITY,
        "parameters": [
            _PROJECT,
            *parameters,
            *((_IDEMPOTENCY,) if idempotent else ()),
            _CLIENT_ID,
        ],
        "responses": responses,
    }
    if description:
        op["description"] = description
    if body is not None:
        op["requestBody"] = body
    return op


def _spending(family: str, ok: dict[str, Any], extra: tuple[int, ...] = ()) -> dict[str, Any]:
    statuses = sorted({*_API_ERRORS, *_BODY_ERRORS, *_SPEND_ERRORS, *extra})
    return {"200": ok, **_errors(family, *statuses)}


_SPEND_NOTE = (
    " Needs the `write` scope. Runs the gateway's pipeline: validation (422 naming the "
    "field), the budget hold (402 before anything is spent), rate limits, "
    "`Idempotency-Key`, the provider's answer relayed, the usage billed."
)


def _chat_paths() -> dict[str, Any]:
    chat_ok = _ok(
        "The completion (unary), or its stream.",
        {
            JSON: {
                "schema": {"oneOf": [_ref("KartaChatCompletion"), _ref("OpenAIChatCompletion")]}
            },
            **_stream(
                "ChatStreamEvent",
                "karta profile: `event: chunk` frames of `chat.completion.chunk` objects, "
                "then `event: [DONE]`; openai profile: data-only frames, then "
                "`data: [DONE]`. The usage chunk comes last when "
                "`stream_options.include_usage` asked for it. A failure after the first "
                'byte is an `error` event (karta) or a `data: {"error": ...}` frame.',
            ),
        },
        {**_BUDGET_HEADERS, **_REPLAY_HEADERS},
    )
    return {
        f"{V1}/chat/completions": {
            "post": _api(
                "Chat completions",
                "createChatCompletion",
                "chat",
                _spending("Gateway", chat_ok),
                description="OpenAI's chat completions, answered in the project's wire "
                "profile (`karta` or `openai`)." + _SPEND_NOTE,
                body=_body("ChatCompletionRequest"),
                idempotent=True,
            )
        }
    }


# A stored response is read back by its id (unless the request said store: false).
_STORED_RESPONSE_LINK = {
    "GetResponse": {
        "operationId": "getResponse",
        "parameters": {
            "project_ref": "$request.path.project_ref",
            "response_id": "$response.body#/id",
        },
        "description": "The stored response (with `store`, the default).",
    }
}


def _responses_paths() -> dict[str, Any]:
    ok = _ok(
        "The response object (unary), or its event stream.",
        {
            **_json(_ref("Response")),
            **_stream(
                "ResponsesStreamEvent",
                "Responses events (`event: <type>` and `data: <json>`, numbered by "
                "`sequence_number`): `response.created`, `response.in_progress`, output "
                "items and their deltas, then `response.completed`, "
                "`response.incomplete` (cut by max_output_tokens) or `response.failed` "
                "followed by `error`.",
            ),
        },
        {**_BUDGET_HEADERS, **_REPLAY_HEADERS},
    )
    return {
        f"{V1}/responses": {
            "post": _api(
                "Create a response",
                "createResponse",
                "responses",
                _spending("OpenAI", {**ok, "links": _STORED_RESPONSE_LINK}),
                description="OpenAI's Responses API, on the chat pipeline; errors are "
                "OpenAI's error object whatever the project's profile." + _SPEND_NOTE,
                body=_body("ResponsesRequest"),
                idempotent=True,
            )
        },
        f"{V1}/responses/{{response_id}}": {
            "get": _api(
                "Get a stored response",
                "getResponse",
                "responses",
                {
                    "200": _ok("The stored response object.", _json(_ref("Response"))),
                    **_errors("OpenAI", *_API_ERRORS, 503),
                },
                description="A response this credential created with `store` (the "
                "default); unknown, expired or another credential's: 404. Needs `read`.",
                parameters=(
                    {
                        "name": "response_id",
                        "in": "path",
                        "required": True,
                        "schema": STRING,
                    },
                ),
            )
        },
    }


def _messages_paths() -> dict[str, Any]:
    ok = _ok(
        "The message (unary), or its event stream.",
        {
            **_json(_ref("Message")),
            **_stream(
                "MessagesStreamEvent",
                "Anthropic's events: `message_start`, `content_block_start` / "
                "`content_block_delta` / `content_block_stop`, `message_delta` (stop "
                "reason, cumulative usage), `message_stop`; `error` on a failure.",
            ),
        },
        {**_BUDGET_HEADERS, **_REPLAY_HEADERS},
    )
    anthropic_headers = (
        {
            "name": "anthropic-version",
            "in": "header",
            "required": False,
            "schema": STRING,
            "description": "Accepted (the Anthropic SDK sends it).",
        },
        {
            "name": "anthropic-beta",
            "in": "header",
            "required": False,
            "schema": STRING,
            "description": "Accepted (comma-separated flags).",
        },
    )
    count_ok = _ok(
        "An upper bound of the input tokens.",
        _json(_ref("CountTokens")),
        {"X-Karta-Estimate": _header("XKartaEstimate")},
    )
    return {
        f"{V1}/v1/messages": {
            "post": _api(
                "Create a message (Anthropic)",
                "createMessage",
                "messages",
                _spending("Anthropic", ok),
                description="Anthropic's Messages API, on the chat pipeline; errors are "
                "Anthropic's shape (402: `billing_error`). The Anthropic SDK and Claude "
                "Code use `base_url` `http://host/v1/projects/{project_ref}` and send "
                "`x-api-key`." + _SPEND_NOTE,
                body=_body("MessagesRequest"),
                idempotent=True,
                parameters=anthropic_headers,
            )
        },
        f"{V1}/v1/messages/count_tokens": {
            "post": _api(
                "Count a prompt's tokens (Anthropic)",
                "countTokens",
                "messages",
                {
                    "200": count_ok,
                    **_errors("Anthropic", *sorted({*_API_ERRORS, *_BODY_ERRORS})),
                },
                description="An upper bound of the prompt's input tokens (the gateway's "
                "reservation bound), never billed. Needs `write`.",
                body=_body("CountTokensRequest"),
                parameters=anthropic_headers,
            )
        },
    }


def _other_v1_paths() -> dict[str, Any]:
    models_errors = _errors("Gateway", *_API_ERRORS)
    return {
        f"{V1}/embeddings": {
            "post": _api(
                "Create embeddings",
                "createEmbeddings",
                "embeddings",
                _spending(
                    "Gateway",
                    _ok(
                        "The embeddings.",
                        _json(_ref("EmbeddingList")),
                        {**_BUDGET_HEADERS, **_REPLAY_HEADERS},
                    ),
                ),
                description="Embeddings for aliases of `kind: embedding`, with an "
                "input-only budget." + _SPEND_NOTE,
                body=_body("EmbeddingsRequest"),
                idempotent=True,
            )
        },
        f"{V1}/models": {
            "get": _api(
                "List the project's models",
                "listModels",
                "models",
                {
                    "200": _ok("The aliases with a route.", _json(_ref("ModelList"))),
                    **models_errors,
                },
                description="The project's aliases that have a route (never the upstream "
                "models behind them), in OpenAI's shape. Needs `read`.",
            )
        },
        f"{V1}/models/{{model}}": {
            "get": _api(
                "Get a model",
                "getModel",
                "models",
                {"200": _ok("The alias.", _json(_ref("Model"))), **models_errors},
                description="One alias (404 if unknown or without a route). Needs `read`.",
                parameters=({"name": "model", "in": "path", "required": True, "schema": STRING},),
            )
        },
        f"{V1}/v1/models": {
            "get": _api(
                "List the project's models (Anthropic)",
                "listModelsAnthropic",
                "models",
                {
                    "200": _ok("The aliases with a route.", _json(_ref("AnthropicModelList"))),
                    **_errors("Anthropic", *_API_ERRORS),
                },
                description="The same aliases in Anthropic's shape. Needs `read`.",
            )
        },
        f"{V1}/session-tokens": {
            "post": _api(
                "Mint a session token",
                "mintSessionToken",
                "credentials",
                {
                    "201": _ok("The token.", _json(_ref("SessionToken"))),
                    **_errors("Gateway", *sorted({*_API_ERRORS, *_BODY_ERRORS, 503})),
                },
                description="An API key with `write` mints a short-lived token for one "
                "end user of the project (a session token cannot: 403). 503 when "
                "session tokens are not configured.",
                body=_body("SessionTokenRequest", required=False),
            )
        },
        f"{V1}/usage": {
            "get": _api(
                "Read the project's usage",
                "getUsage",
                "usage",
                {
                    "200": _ok("The counters.", _json(_ref("Usage"))),
                    **_errors("Gateway", *_API_ERRORS, 503),
                },
                description="Used, reserved in flight, cap and reset time per window and "
                "dimension. Needs `read`.",
            )
        },
    }


_NULLABLE_INT: Schema = {"type": ["integer", "null"]}
_NULLABLE_STR: Schema = {"type": ["string", "null"]}
_API_KEY: Schema = {
    "type": "object",
    "description": "A key as the control plane shows it (never its digest); `key`, the "
    "plaintext, only in the answer that created it.",
    "required": ["id", "object", "source", "read_only", "org", "name", "prefix", "scopes",
                 "status"],
    "properties": {
        "id": STRING,
        "object": {"const": "api_key"},
        "source": {"enum": ["api", "yaml"]},
        "read_only": BOOLEAN,
        "org": STRING,
        "name": STRING,
        "prefix": STRING,
        "scopes": {"type": "array", "items": {"enum": ["read", "write", "admin"]}},
        "status": {"enum": ["active", "revoked", "expired"]},
        "created_at": _NULLABLE_INT,
        "expires_at": _NULLABLE_INT,
        "revoked_at": _NULLABLE_INT,
        "last_used_at": _NULLABLE_INT,
        "rotated_from": _NULLABLE_STR,
        "replaced_by": _NULLABLE_STR,
        "key": _NULLABLE_STR,
    },
}  # fmt: skip
_CREATE_KEY: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
        "scopes": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["read", "write", "admin"]},
        },
        "expires_in_seconds": {"type": "integer", "minimum": 60, "maximum": 315_360_000},
        "expires_at": INTEGER,
    },
}
_ROTATE_KEY: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"grace_seconds": {"type": "integer", "minimum": 0, "maximum": 604_800}},
}


def _control_plane_paths() -> dict[str, Any]:
    """The management API (``/v1/orgs/{org}/api-keys``, gateway.control): an org's
    ``admin`` key manages its own org, the operator token any org."""
    org = {"name": "org", "in": "path", "required": True, "schema": STRING}
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": STRING}
    errors = _errors("Gateway", 400, 401, 403, 404, 409, 422, 500, 503)
    security: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"operatorToken": []}]
    one = _json(_API_KEY)
    listed = _json(
        {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _API_KEY},
            },
        }
    )

    # A key the config files define, or one already rotated, revoked or expired: the
    # control plane's own conflict body (its code in `error`).
    conflict = {
        "description": "The key is managed in the config files, or cannot be rotated.",
        "headers": dict(_COMMON_HEADERS),
        "content": _json(
            {
                "oneOf": [
                    _object({"error": STRING, "message": STRING}, ("error", "message")),
                    _ref("KartaError"),
                    _ref("OpenAIError"),
                ]
            }
        ),
    }

    def op(op_id: str, summary: str, answers: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {
            "summary": summary,
            "operationId": op_id,
            "tags": ["control plane"],
            "security": security,
            "responses": {**answers, **errors, "409": conflict},
            **more,
        }

    created = _ok("Created: the plaintext in `key`, this once.", one)
    return {
        "/v1/orgs/{org}/api-keys": {
            "parameters": [org],
            "post": op(
                "createApiKey",
                "Create an API key",
                {"201": created},
                parameters=[_IDEMPOTENCY],
                requestBody={"required": True, "content": _json(_CREATE_KEY)},
            ),
            "get": op("listApiKeys", "List the org's keys", {"200": _ok("The keys.", listed)}),
        },
        "/v1/orgs/{org}/api-keys/{key_id}": {
            "parameters": [org, key_id],
            "get": op("getApiKey", "One key", {"200": _ok("The key.", one)}),
        },
        "/v1/orgs/{org}/api-keys/{key_id}/revoke": {
            "parameters": [org, key_id],
            "post": op(
                "revokeApiKey",
                "Revoke a key (every gateway process within a second)",
                {"200": _ok("Revoked.", one)},
                parameters=[_IDEMPOTENCY],
                requestBody={
                    "required": False,
                    "content": _json({"type": "object", "maxProperties": 0}),
                },
            ),
        },
        "/v1/orgs/{org}/api-keys/{key_id}/rotate": {
            "parameters": [org, key_id],
            "post": op(
                "rotateApiKey",
                "Rotate a key (the old one works for its grace period)",
                {
                    "201": _ok(
                        "The new key (`previous`: the old one).",
                        _json(
                            {
                                **_API_KEY,
                                "properties": {**_API_KEY["properties"], "previous": _API_KEY},
                            }
                        ),
                    )
                },
                parameters=[_IDEMPOTENCY],
                requestBody={"required": False, "content": _json(_ROTATE_KEY)},
            ),
        },
    }


def _root_paths() -> dict[str, Any]:
    operator_errors = _errors("Gateway", 400, 401, 403, 500)
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": _ok("The process answers.", _json(_ref("Health")))},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "operationId": "readyz",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": _ok("Accepting requests, budget store reachable.", _json(_ref("Ready"))),
                    "503": _ok(
                        "Draining, or the budget store is unreachable.",
                        _json(_ref("NotReady")),
                        {"Retry-After": _header("RetryAfter")},
                    ),
                },
            }
        },
        "/admin/reload": {
            "post": {
                "summary": "Reload the config",
                "operationId": "adminReload",
                "tags": ["operations"],
                "description": "Re-reads the config (as SIGHUP does). Only the operator "
                "token (`KARTA_OPERATOR_TOKEN`) opens it: an org's key or session token "
                "is 403, as is every caller while no operator token is set. A rejected "
                "config keeps the old one serving and is 422 naming every problem.",
                "security": [{"operatorToken": []}],
                "responses": {
                    "200": _ok("Reloaded.", _json(_ref("Reloaded"))),
                    "422": _ok("The new config is invalid.", _json(_ref("ConfigInvalid"))),
                    **operator_errors,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": _ok("The OpenAPI 3.1 document.", _json({"type": "object"}))},
            }
        },
    }


def _paths() -> dict[str, Any]:
    return {
        **_root_paths(),
        **_chat_paths(),
        **_responses_paths(),
        **_messages_paths(),
        **_other_v1_paths(),
        **_control_plane_paths(),
    }


# ---------------------------------------------------------------------------- document


def _version() -> str:
    try:
        return version("karta-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; callers must not change it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "karta gateway",
            "version": _version(),
            "description": "An LLM API gateway: authenticated, budgeted, streaming reverse "
            "proxy for model providers. Every API route lives under "
            "`/v1/projects/{project_ref}/`. Every answer carries `X-Request-Id`.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": name}
            for name in (
                "chat",
                "responses",
                "messages",
                "embeddings",
                "models",
                "credentials",
                "usage",
                "operations",
            )
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`kt_live_` + 32 base62 characters) or a "
                    "session token (an HS256 JWT minted for one project).",
                },
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same credential as the Anthropic SDK sends it "
                    "(read when there is no Authorization header).",
                },
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator's token (`KARTA_OPERATOR_TOKEN`), never an "
                    "org's key.",
                },
            },
            "parameters": {
                "ProjectRef": {
                    "name": "project_ref",
                    "in": "path",
                    "required": True,
                    "description": "The project's slug or id (another org's, or unknown: 404).",
                    "schema": NONEMPTY,
                },
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Makes retries safe: a completed unary answer is replayed "
                    "(`Idempotent-Replayed: true`); one in flight is 409 (same body) or 422 "
                    "(another body).",
                    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                },
                "ClientRequestId": {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": False,
                    "description": "The client's own id: kept (logs, ledger, "
                    "`X-Client-Request-Id`) when 1 to 128 of `A-Za-z0-9._:-`, else ignored.",
                    "schema": STRING,
                },
            },
            "headers": _headers(),
            "responses": _error_responses(),
            "schemas": {
                **_KARTA_ERRORS,
                **_OTHER_ERRORS,
                **_chat_schemas(),
                **_responses_schemas(),
                **_messages_schemas(),
                **_other_schemas(),
                **_stream_schemas(),
            },
        },
    }


@functools.cache
def _encoded() -> bytes:
    return orjson.dumps(document())


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the document, without auth."""
    return web.Response(body=_encoded(), content_type=JSON)
