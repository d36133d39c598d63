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

from gateway.errors import ValidationFailed
from gateway.providers.anthropic import translate_request
from gateway.usage import input_token_bound
from gateway.validation import validate_chat_request
from tests.support.strategies import body_like, json_values


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
