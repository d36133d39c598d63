"""Fuzz: whatever a client sends, it is accepted whole or refused with a 422 that names
what was wrong, and what is accepted can be bounded, rewritten and translated.

Bodies are chat-shaped objects whose fields hold values of the right shape or of any
JSON type. Validation may only raise ValidationFailed; an accepted body must give an
input bound no smaller than its text, and must translate for an Anthropic route or be
refused there with ValidationFailed, never with another exception (a 500).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ValidationFailed
from gateway.providers.anthropic import translate_request
from gateway.usage import input_token_bound
from gateway.validation import validate_chat_request
from tests.fuzz.test_upstream_fuzz import json_values, shaped

part_like = shaped(
    {
        "type": st.sampled_from(["text", "image_url", "input_audio", "file"]),
        "text": st.text(max_size=10),
        "image_url": shaped(
            {"url": st.sampled_from(["https://x/y.png", "data:image/png;base64,AAAA"])}
        ),
    }
)
message_like = shaped(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.text(max_size=20) | st.lists(part_like, max_size=3),
        "name": st.text(max_size=6),
        "tool_call_id": st.text(max_size=6),
        "tool_calls": st.lists(
            shaped(
                {
                    "id": st.text(max_size=4),
                    "type": st.just("function"),
                    "function": shaped(
                        {"name": st.text(max_size=4), "arguments": st.text(max_size=8)}
                    ),
                }
            ),
            max_size=2,
        ),
    }
)
tool_like = shaped(
    {
        "type": st.just("function"),
        "function": shaped(
            {
                "name": st.text(max_size=6),
                "description": st.text(max_size=6),
                "parameters": shaped({"type": st.just("object")}),
            }
        ),
    }
)
body_like = shaped(
    {
        "messages": st.lists(message_like, max_size=4),
        "model": st.text(max_size=6),
        "stream": st.booleans(),
        "stream_options": shaped({"include_usage": st.booleans()}),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 10_000),
        "max_completion_tokens": st.integers(1, 10_000),
        "n": st.integers(1, 3),
        "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=3),
        "tools": st.lists(tool_like, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "parallel_tool_calls": st.booleans(),
        "response_format": shaped(
            {
                "type": st.sampled_from(["text", "json_object", "json_schema"]),
                "json_schema": shaped(
                    {"name": st.text(max_size=4), "schema": shaped({"type": st.just("object")})}
                ),
            }
        ),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "user": st.text(max_size=6),
    }
)


def _text_bytes(body: dict[str, Any]) -> int:
    total = 0
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.encode())
    return total


@given(body_like | json_values)
def test_any_body_is_accepted_whole_or_refused_with_a_named_field(body: Any) -> None:
    refused: ValidationFailed | None = None
    try:
        chat = validate_chat_request(body)
    except ValidationFailed as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 422
        assert refused.body["error"] == "validation_failed"
        assert refused.body["message"]
        return
    assert input_token_bound(chat.body, 1000) >= _text_bytes(chat.body)
    route_body = {**chat.body, "model": "claude-x", "max_completion_tokens": 100}
    translated: dict[str, Any] | None = None
    try:
        translated = translate_request(route_body)
    except ValidationFailed as exc:
        refused = exc
    if refused is not None:
        assert refused.body["param"], refused.body  # refused for a reason it names
        return
    assert translated is not None
    assert translated["messages"]
    assert translated["max_tokens"] == 100
