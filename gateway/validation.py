"""Chat-completion request validation, pure: a parsed JSON body in, a ChatRequest out.

Checks the types of the parameters the gateway understands (gateway.params.UNDERSTOOD);
which parameters may go upstream at all is gateway.params's decision. Every failure
raises ValidationFailed naming the offending field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import ValidationFailed
from gateway.params import STREAM_OPTIONS

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})
# Audio tokens cost several times text tokens (gpt-4o-audio: $40/M in vs $2.50 text):
# billed at text prices, a cap would not hold. Refused until the price table has them.
_NO_AUDIO = (
    "audio input and output are not supported: audio tokens are priced apart from text, "
    "and this gateway bills text prices"
)


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]  # the validated body, as received
    model: str | None  # alias asked for (None: project default)
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    max_tokens: int | None  # max_completion_tokens or max_tokens
    n: int


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed(f"{name} must be a number", name)
    if not lo <= value <= hi:
        raise ValidationFailed(f"{name} must be between {lo:g} and {hi:g}", name)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{name} must be an integer", name)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValidationFailed(f"{name} must be {bound}", name)
    return value


def _typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise ValidationFailed(f"{name} must be {what}", name)


def _content(content: Any, where: str, role: str) -> None:
    if isinstance(content, str):
        return
    if content is None:
        if role in ("assistant", "function"):
            return  # assistant turns that only carry tool_calls
        raise ValidationFailed(f"{where}.content is required", f"{where}.content")
    if not isinstance(content, list):
        raise ValidationFailed(
            f"{where}.content must be a string or an array of content parts", f"{where}.content"
        )
    for j, part in enumerate(content):
        pwhere = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise ValidationFailed(f"{pwhere} must be an object", pwhere)
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in PART_TYPES:
            raise ValidationFailed(
                f"{pwhere}.type must be one of {sorted(PART_TYPES)}", f"{pwhere}.type"
            )
        if kind == "input_audio":
            raise ValidationFailed(_NO_AUDIO, pwhere)
        if kind == "text" and not isinstance(part.get("text"), str):
            raise ValidationFailed(f"{pwhere}.text must be a string", f"{pwhere}.text")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise ValidationFailed(
                    f"{pwhere}.image_url.url must be a string", f"{pwhere}.image_url"
                )


def _messages(messages: Any) -> None:
    if messages is None:
        raise ValidationFailed("messages is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed("messages must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ValidationFailed(f"{where} must be an object", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list is no role (nor hashable)
            raise ValidationFailed(f"{where}.role must be one of {sorted(ROLES)}", f"{where}.role")
        if "content" not in message and not (
            message.get("tool_calls") or message.get("function_call")
        ):
            raise ValidationFailed(f"{where}.content is required", f"{where}.content")
        if message.get("audio") is not None:
            raise ValidationFailed(_NO_AUDIO, f"{where}.audio")
        _content(message.get("content"), where, role)
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise ValidationFailed(f"{where}.name must be a string", f"{where}.name")
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise ValidationFailed(f"{where}.tool_calls must be an array", f"{where}.tool_calls")
        call_id = message.get("tool_call_id")
        if (role == "tool" or call_id is not None) and not isinstance(call_id, str):
            what = "is required" if call_id is None else "must be a string"
            raise ValidationFailed(f"{where}.tool_call_id {what}", f"{where}.tool_call_id")


def validate_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded chat-completions body; raise ValidationFailed on the first problem."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", None)
    _messages(body.get("messages"))
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ValidationFailed("model must be a non-empty string", "model")
    _typed(body, "stream", bool, "a boolean")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise ValidationFailed("stream_options must be an object", "stream_options")
        for name, value in options.items():
            where = f"stream_options.{name}"
            if name not in STREAM_OPTIONS:
                raise ValidationFailed(
                    f"unknown parameter {where!r}: stream_options may hold "
                    f"{', '.join(sorted(STREAM_OPTIONS))}",
                    where,
                )
            if not isinstance(value, bool):
                raise ValidationFailed(f"{where} must be a boolean", where)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    max_tokens = _integer(body, "max_tokens", 1)
    max_completion = _integer(body, "max_completion_tokens", 1)
    n = _integer(body, "n", 1, 128) or 1
    _integer(body, "seed", -(2**63), 2**63 - 1)
    _integer(body, "top_logprobs", 0, 20)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise ValidationFailed("stop must be a string or an array of up to 4 strings", "stop")
    _typed(body, "tools", list, "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):
            raise ValidationFailed(f"tools[{i}] must be an object", f"tools[{i}]")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise ValidationFailed("tool_choice must be a string or an object", "tool_choice")
    _typed(body, "response_format", dict, "an object")
    _typed(body, "user", str, "a string")
    _typed(body, "logprobs", bool, "a boolean")
    _typed(body, "parallel_tool_calls", bool, "a boolean")
    _typed(body, "logit_bias", dict, "an object")
    _typed(body, "metadata", dict, "an object")
    _typed(body, "service_tier", str, "a string")
    _typed(body, "reasoning_effort", str, "a string")
    _typed(body, "verbosity", str, "a string")
    _typed(body, "store", bool, "a boolean")
    _typed(body, "safety_identifier", str, "a string")
    _typed(body, "prompt_cache_key", str, "a string")
    _typed(body, "functions", list, "an array")
    _typed(body, "function_call", (str, dict), "a string or an object")
    _typed(body, "modalities", list, "an array")
    if body.get("service_tier") == "priority":
        # Billed at a higher price than the price table's: caps and bills would be wrong.
        raise ValidationFailed(
            "service_tier 'priority' is billed above the prices this gateway knows; "
            "use 'auto', 'default' or 'flex'",
            "service_tier",
        )
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise ValidationFailed(
            _NO_AUDIO, "audio" if body.get("audio") is not None else "modalities"
        )
    stream = body.get("stream") is True
    return ChatRequest(
        body=body,
        model=model,
        stream=stream,
        include_usage=stream and bool(options and options.get("include_usage")),
        max_tokens=max_completion if max_completion is not None else max_tokens,
        n=n,
    )


def asks_for_json(body: Mapping[str, Any]) -> bool:
    """Whether a chat request asks for a JSON answer (``response_format`` JSON modes)."""
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )
