"""An Anthropic Messages answer, pure: a Messages answer as an OpenAI
``chat.completion`` and its typed usage (:func:`translate_response`).

Usage (:func:`anthropic_usage`): the input counts every input token (uncached + cache
writes + cache reads), ``cached_input_tokens`` the cache reads and
``cache_creation_input_tokens`` the cache writes, so each is priced with its own price.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.providers.anthropic.request import JSON_TOOL
from gateway.providers.base import Completion
from gateway.usage import MAX_REPORTED_TOKENS, Usage

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def positive_count(value: Any) -> int:
    """A count Anthropic sent: a positive integer (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def anthropic_usage(usage: Mapping[str, Any]) -> Usage | None:
    """Anthropic usage as the gateway's: counts missing, null or of the wrong type are
    0; a count over MAX_REPORTED_TOKENS is no usage (None: the caller estimates, never
    below the truth), as for every provider (gateway.usage.from_openai)."""
    cache_write = positive_count(usage.get("cache_creation_input_tokens"))
    cache_read = positive_count(usage.get("cache_read_input_tokens"))
    prompt = positive_count(usage.get("input_tokens")) + cache_write + cache_read
    completion = positive_count(usage.get("output_tokens"))
    if prompt > MAX_REPORTED_TOKENS or completion > MAX_REPORTED_TOKENS:
        return None
    breakdown = usage.get("cache_creation")
    written_1h = (
        positive_count(breakdown.get("ephemeral_1h_input_tokens"))
        if isinstance(breakdown, Mapping)
        else 0
    )
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cached_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        cache_creation_1h_input_tokens=min(written_1h, cache_write),
    )


def finish_reason(stop_reason: Any) -> str:
    return _STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def finish_for(stop_reason: Any, json_answer: bool) -> str:
    """The finish_reason of a call that asked for JSON (``json_answer``) or not."""
    if json_answer and stop_reason == "tool_use":
        return "stop"  # it called the answer tool, as it was told to
    return finish_reason(stop_reason)


def tool_arguments(value: Any) -> str:
    """A tool's input as OpenAI's ``arguments`` (a JSON string)."""
    return orjson.dumps(value if value is not None else {}).decode()


def translate_response(
    message: Any, created: int | None = None, *, json_answer: bool = False
) -> Completion:
    """A Messages answer as an OpenAI ``chat.completion`` and its usage (None: none
    usable); ValueError if it is not one.

    ``json_answer``: the request asked for JSON, so the forced tool's input is the
    answer's content (and the model stopping to call it is a normal stop).
    """
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise ValueError("not an Anthropic message")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            if not json_answer:  # any words around the JSON are not part of it
                texts.append(block["text"])
        elif json_answer and block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
            texts.append(tool_arguments(block.get("input")))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": tool_arguments(block.get("input")),
                    },
                }
            )
        # thinking / redacted_thinking / server tool blocks: not part of the OpenAI shape
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        reply["tool_calls"] = calls
    completion: dict[str, Any] = {
        "id": message.get("id") or "",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model") or "",
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_for(message.get("stop_reason"), json_answer),
            }
        ],
    }
    usage = message.get("usage")
    return completion, anthropic_usage(usage) if isinstance(usage, dict) else None
