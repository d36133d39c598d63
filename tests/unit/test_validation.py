"""Unit tests for gateway.validation.validate_chat_request (pure dicts)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.errors import ValidationFailed
from gateway.validation import ChatRequest, validate_chat_request

USER = {"role": "user", "content": "Hello"}

RICH: dict[str, Any] = {
    "model": "smart",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in English."},
        {
            "role": "user",
            "name": "zoe",
            "content": [
                {"type": "text", "text": "What is in this picture and what is the capital?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_capital", "arguments": '{"country":"UK"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "London"},
        {"role": "assistant", "content": "A cat. London."},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
    ],
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.2,
    "top_p": 1,
    "presence_penalty": -0.5,
    "frequency_penalty": 2,
    "max_tokens": 300,
    "max_completion_tokens": 200,
    "n": 2,
    "seed": 42,
    "stop": ["\n\n", "END"],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_capital",
                "parameters": {"type": "object", "properties": {"country": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_capital"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "text"},
    "user": "end-user-1",
    "logprobs": True,
    "top_logprobs": 3,
    "logit_bias": {"50256": -100},
    "metadata": {"trace": "x"},
    "some_future_parameter": {"anything": [1, 2, 3]},
}


def _fails(body: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        validate_chat_request(body)
    exc = info.value
    assert exc.status == 422
    assert exc.body["error"] == "validation_failed"
    assert isinstance(exc.body["message"], str)
    assert exc.body["message"]
    return exc


def _param(body: Any) -> str | None:
    param: str | None = _fails(body).body["param"]
    return param


def _with(**fields: Any) -> dict[str, Any]:
    return {"messages": [dict(USER)], **fields}


# --------------------------------------------------------------------------- valid


def test_minimal_body() -> None:
    body = {"messages": [dict(USER)]}
    chat = validate_chat_request(body)
    assert chat == ChatRequest(
        body=body, model=None, stream=False, include_usage=False, max_tokens=None, n=1
    )
    assert chat.body is body


def test_rich_body() -> None:
    body = copy.deepcopy(RICH)
    chat = validate_chat_request(body)
    assert chat.body == RICH  # passed on untouched, unknown parameters included
    assert chat.model == "smart"
    assert chat.stream is True
    assert chat.include_usage is True
    assert chat.max_tokens == 200
    assert chat.n == 2


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": ""},
        {"role": "user", "content": []},
        {"role": "function", "name": "f", "content": None},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
    ],
)
def test_valid_message_shapes(message: dict[str, Any]) -> None:
    validate_chat_request({"messages": [dict(USER), message]})


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0},
        {"temperature": 2},
        {"temperature": 1.5},
        {"top_p": 0},
        {"top_p": 0.99},
        {"stop": "END"},
        {"stop": ["a", "b", "c", "d"]},
        {"stop": []},
        {"n": 16},
        {"max_tokens": 1},
        {"stream": False},
        {"stream_options": {}},
        {"tool_choice": "auto"},
        {"tool_choice": "none"},
        {"tools": []},
        {"seed": -1},
        {"model": "default"},
        {"temperature": None},
    ],
)
def test_valid_parameters(fields: dict[str, Any]) -> None:
    validate_chat_request(_with(**fields))


# --------------------------------------------------------------------------- invalid: messages


def test_body_not_an_object() -> None:
    for body in ([USER], "hi", None, 3):
        assert _param(body) is None


@pytest.mark.parametrize("messages", ["missing", None, [], "Hello", {"role": "user"}, 5])
def test_messages_missing_empty_or_not_a_list(messages: Any) -> None:
    body: dict[str, Any] = {} if messages == "missing" else {"messages": messages}
    assert _param(body) == "messages"


def test_message_not_an_object() -> None:
    assert _param({"messages": [dict(USER), "hello"]}) == "messages[1]"


@pytest.mark.parametrize("role", ["robot", "User", "", None, 1, ["user"], {"a": 1}])
def test_bad_role(role: Any) -> None:
    assert _param({"messages": [dict(USER), {"role": role, "content": "x"}]}) == "messages[1].role"


def test_missing_role() -> None:
    assert _param({"messages": [{"content": "x"}]}) == "messages[0].role"


@pytest.mark.parametrize("content", [123, {"text": "x"}, True, 1.5])
def test_content_wrong_type(content: Any) -> None:
    assert _param({"messages": [{"role": "user", "content": content}]}) == "messages[0].content"


def test_content_missing_for_user() -> None:
    assert _param({"messages": [{"role": "user"}]}) == "messages[0].content"
    assert _param({"messages": [{"role": "user", "content": None}]}) == "messages[0].content"


@pytest.mark.parametrize("part_type", ["video", None, "TEXT", 3, ["text"], {"t": 1}])
def test_content_part_bad_type(part_type: Any) -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": part_type}]}
        ]
    }
    assert _param(body) == "messages[0].content[1].type"


def test_content_part_not_an_object() -> None:
    body = {"messages": [{"role": "user", "content": ["hello"]}]}
    assert _param(body) == "messages[0].content[0]"


def test_text_part_without_string_text() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    assert _param(body) == "messages[0].content[0].text"


@pytest.mark.parametrize("image", [None, "https://x/cat.png", {}, {"url": 5}])
def test_image_part_without_url(image: Any) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]}
    assert _param(body) == "messages[0].content[0].image_url"


def test_name_not_a_string() -> None:
    body = {"messages": [{"role": "user", "name": 5, "content": "x"}]}
    assert _param(body) == "messages[0].name"


def test_tool_calls_not_a_list() -> None:
    body = {"messages": [dict(USER), {"role": "assistant", "content": None, "tool_calls": {}}]}
    assert _param(body) == "messages[1].tool_calls"


@pytest.mark.parametrize(
    "message",
    [{"role": "tool", "content": "London"}, {"role": "tool", "content": "x", "tool_call_id": 7}],
)
def test_tool_message_without_tool_call_id(message: dict[str, Any]) -> None:
    assert _param({"messages": [dict(USER), message]}) == "messages[1].tool_call_id"


# --------------------------------------------------------------------------- invalid: parameters


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": ""}, "model"),
        ({"model": 5}, "model"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -1}, "top_p"),
        ({"top_p": "1"}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": 100.0}, "max_tokens"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": False}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": True}, "n"),
        ({"seed": 1.5}, "seed"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 5]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream_options": "include_usage"}, "stream_options"),
        (
            {"stream": True, "stream_options": {"include_usage": "true"}},
            "stream_options.include_usage",
        ),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": "get_capital"}, "tools"),
        ({"tools": ["get_capital"]}, "tools[0]"),
        ({"tool_choice": 5}, "tool_choice"),
        ({"response_format": "json"}, "response_format"),
        ({"user": 5}, "user"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({"logit_bias": []}, "logit_bias"),
        ({"metadata": "x"}, "metadata"),
    ],
)
def test_invalid_parameter_named(fields: dict[str, Any], param: str) -> None:
    exc = _fails(_with(**fields))
    assert exc.body["param"] == param
    assert param.split("[")[0].split(".")[0] in exc.body["message"]


# --------------------------------------------------------------------------- derived fields


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"stream": False, "stream_options": {"include_usage": True}}, False),
        ({"stream_options": {"include_usage": True}}, False),
    ],
)
def test_include_usage_only_when_streaming_and_asked(
    fields: dict[str, Any], expected: bool
) -> None:
    chat = validate_chat_request(_with(**fields))
    assert chat.include_usage is expected
    assert chat.stream is (fields.get("stream") is True)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"max_tokens": 300}, 300),
        ({"max_completion_tokens": 200}, 200),
        ({"max_tokens": 300, "max_completion_tokens": 200}, 200),
        ({"max_tokens": 100, "max_completion_tokens": 900}, 900),
        ({"max_tokens": None, "max_completion_tokens": 7}, 7),
        ({"max_tokens": 8, "max_completion_tokens": None}, 8),
    ],
)
def test_max_tokens_prefers_max_completion_tokens(
    fields: dict[str, Any], expected: int | None
) -> None:
    assert validate_chat_request(_with(**fields)).max_tokens == expected


def test_n_defaults_to_one() -> None:
    assert validate_chat_request(_with()).n == 1
    assert validate_chat_request(_with(n=None)).n == 1
    assert validate_chat_request(_with(n=4)).n == 4


# ------------------------------------------------------------- refused for billing, or accepted


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"service_tier": 3}, "service_tier"),
    ],
)
def test_what_the_price_table_cannot_bill_is_refused(change: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **change}
    assert _param(body) == param


def test_audio_parts_and_audio_references_are_refused() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}
    assert _param({"messages": [{"role": "user", "content": [part]}]}) == "messages[0].content[0]"
    reference = {"role": "assistant", "content": None, "audio": {"id": "audio_abc"}}
    body = {"messages": [{"role": "user", "content": "hi"}, reference]}
    assert _param(body) == "messages[1].audio"


@pytest.mark.parametrize("call_id", [5, True, ["x"], {"a": 1}])
def test_a_tool_call_id_must_be_a_string_on_any_message(call_id: Any) -> None:
    """It was checked on tool messages only, and crashed the input bound (a 500)."""
    body = {"messages": [{"role": "user", "content": "hi", "tool_call_id": call_id}]}
    assert _param(body) == "messages[0].tool_call_id"


def test_valid_openai_shapes_that_were_refused() -> None:
    legacy_call = {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}
    body = {"messages": [{"role": "user", "content": "hi"}, legacy_call], "n": 128}
    assert validate_chat_request(body).n == 128
    for tier in ("auto", "default", "flex"):
        validate_chat_request(
            {"messages": [{"role": "user", "content": "hi"}], "service_tier": tier}
        )
