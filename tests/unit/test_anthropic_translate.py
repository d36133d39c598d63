"""Unit tests for gateway.providers.anthropic: pure translation on dicts and bytes.

OpenAI chat body -> Anthropic Messages body, Messages answer -> chat.completion and
its Usage, and the recorded Anthropic SSE streams (tests/data) -> OpenAI chunk dicts
and a Usage, fed whole, in 97-byte slices and split at every byte.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ValidationFailed
from gateway.providers.anthropic import (
    JSON_TOOL,
    AnthropicStreamTranslator,
    anthropic_error_for_status,
    anthropic_usage,
    finish_reason,
    translate_request,
    translate_response,
)
from gateway.providers.base import StreamEvent, UpstreamStreamError
from gateway.usage import Usage

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TEXT_FIXTURE = (DATA_DIR / "anthropic_messages_text_cache_usage.sse").read_bytes()
TOOL_FIXTURE = (DATA_DIR / "anthropic_messages_tool_use.sse").read_bytes()
TOOL_ID = "toolu_01NRLabsLyVHZPKxbKvkfSMn"
TOOL_ARGS = '{"location": "Paris"}'
TOOL_TEXT = "I'll check the current weather in Paris for you."
OVERLOADED = (
    b"event: error\n"
    b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
)


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "messages": list(messages) or [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 100,
        **extra,
    }


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def call(id_: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


# ============================================================================ request


def test_minimal_request() -> None:
    out = translate_request(body())
    assert out == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": [text("Hi")]}],
        "max_tokens": 100,
    }


def test_system_and_developer_messages_are_joined_into_system() -> None:
    out = translate_request(
        body(
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [text("Answer in French."), text("No emoji.")]},
            user("Hi"),
            {"role": "system", "content": "Late system note."},
        )
    )
    assert out["system"] == "You are terse.\n\nAnswer in French.\nNo emoji.\n\nLate system note."
    assert out["messages"] == [{"role": "user", "content": [text("Hi")]}]


def test_system_parts_with_cache_control_are_sent_as_system_blocks() -> None:
    """A system prompt is flattened to one string only when no part carries a
    cache_control mark; otherwise each part is a text block keeping its mark."""
    mark = {"type": "ephemeral", "ttl": "1h"}
    out = translate_request(
        body(
            {"role": "system", "content": "You are terse."},
            {
                "role": "developer",
                "content": [
                    {**text("Long manual."), "cache_control": mark},
                    text(""),
                    text("Tail"),
                ],
            },
            user("Hi"),
        )
    )
    assert out["system"] == [
        text("You are terse."),
        {**text("Long manual."), "cache_control": {"type": "ephemeral"}},
        text("Tail"),
    ]
    assert out["messages"] == [{"role": "user", "content": [text("Hi")]}]


def test_system_parts_with_unknown_cache_control_marks_stay_a_string() -> None:
    part = {**text("x"), "cache_control": {"type": "forever"}}
    assert (
        translate_request(body({"role": "system", "content": [part]}, user("Hi")))["system"] == "x"
    )


def test_no_system_field_without_system_messages() -> None:
    assert "system" not in translate_request(body())


def test_content_parts_text_and_images() -> None:
    out = translate_request(
        body(
            user(
                [
                    text("What is in these?"),
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                    },
                ]
            )
        )
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                text("What is in these?"),
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


@pytest.mark.parametrize(
    "url", ["data:image/png,not-base64", "data:;base64,AAAA", "ftp://example.com/x.png"]
)
def test_unusable_image_urls_are_rejected_naming_the_field(url: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(user([text("see"), part])))
    assert info.value.status == 422
    assert info.value.body["param"] == "messages[0].content[1].image_url.url"


def test_pdf_file_parts_become_documents() -> None:
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
    }
    out = translate_request(body(user([part])))
    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


def test_unsupported_part_types_are_rejected() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(user([part])))
    assert info.value.body["param"] == "messages[0].content[0].type"


@pytest.mark.parametrize(
    "mark",
    [{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}, {"type": "ephemeral", "ttl": "5m"}],
    ids=["plain", "1h", "5m"],
)
def test_cache_control_marks_are_passed_as_5_minute_breakpoints(mark: dict[str, Any]) -> None:
    """1-hour cache writes cost more than the one cache_write price the gateway bills."""
    part = {**text("long context"), "cache_control": mark}
    tool = {**TOOLS[1], "cache_control": mark}
    out = translate_request(body(user([part]), tools=[tool]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    ]
    assert out["tools"][0]["cache_control"] == {"type": "ephemeral"}


def test_unknown_cache_control_marks_are_dropped() -> None:
    part = {**text("x"), "cache_control": {"type": "forever"}}
    assert translate_request(body(user([part])))["messages"][0]["content"] == [text("x")]


def test_consecutive_same_role_turns_are_merged() -> None:
    out = translate_request(
        body(
            user("one"),
            user([text("two")]),
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            user("five"),
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [text("one"), text("two")]},
        {"role": "assistant", "content": [text("three"), text("four")]},
        {"role": "user", "content": [text("five")]},
    ]


def test_empty_text_and_empty_turns_are_dropped() -> None:
    out = translate_request(
        body(user("a"), {"role": "assistant", "content": ""}, user([text(""), text("b")]))
    )
    assert out["messages"] == [{"role": "user", "content": [text("a"), text("b")]}]


def test_a_request_with_only_system_messages_is_rejected() -> None:
    with pytest.raises(ValidationFailed) as info:
        translate_request(body({"role": "system", "content": "only me"}))
    assert info.value.body["param"] == "messages"


def test_tool_calls_and_tool_results() -> None:
    out = translate_request(
        body(
            user("Weather in Paris and Rome?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("toolu_1", "get_weather", '{"location": "Paris"}'),
                    call("toolu_2", "get_weather", '{"location": "Rome"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [text("21C, clear")]},
            user("And tomorrow?"),
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [text("Weather in Paris and Rome?")]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"location": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("21C, clear")]},
                text("And tomorrow?"),
            ],
        },
    ]


def test_assistant_text_comes_before_its_tool_use() -> None:
    out = translate_request(
        body(
            user("hi"),
            {"role": "assistant", "content": "Let me look.", "tool_calls": [call("t1", "f", "")]},
        )
    )
    assert out["messages"][1]["content"] == [
        text("Let me look."),
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
    ]


def test_tool_results_open_the_user_turn() -> None:
    out = translate_request(
        body(
            user("hi"),
            {"role": "assistant", "content": None, "tool_calls": [call("t1", "f", "{}")]},
            user("btw"),
            {"role": "tool", "tool_call_id": "t1", "content": "done"},
        )
    )
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "done"},
        text("btw"),
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"a string"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [call("t1", "f", arguments)]}
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(user("hi"), message))
    assert info.value.body["param"] == "messages[1].tool_calls[0].function.arguments"


def test_legacy_function_messages_are_rejected() -> None:
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(user("hi"), {"role": "function", "name": "f", "content": "x"}))
    assert info.value.body["param"] == "messages[1]"


def test_legacy_assistant_function_calls_are_rejected() -> None:
    """Its call cannot be sent as a tool_use (no id to pair a result with): dropping it
    silently would merge the turns around it into one user turn."""
    legacy = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    with pytest.raises(ValidationFailed) as info:
        translate_request(
            body(
                user("weather?"),
                {"role": "assistant", "content": None, "function_call": legacy},
                user("and?"),
            )
        )
    assert info.value.status == 422
    assert info.value.body["param"] == "messages[1].function_call"
    assert "legacy" in info.value.body["message"]


def test_a_null_function_call_in_an_assistant_message_is_accepted() -> None:
    """SDKs replaying a previous answer (model_dump) send function_call: null."""
    message = {"role": "assistant", "content": "Hello", "function_call": None}
    out = translate_request(body(user("hi"), message, user("again")))
    assert [turn["role"] for turn in out["messages"]] == ["user", "assistant", "user"]


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": WEATHER_SCHEMA,
            "strict": True,
        },
    },
    {"type": "function", "function": {"name": "now"}},
]


def test_function_tools_become_anthropic_tools() -> None:
    out = translate_request(body(tools=TOOLS))
    assert out["tools"] == [
        {"name": "get_weather", "description": "Current weather", "input_schema": WEATHER_SCHEMA},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


def test_non_function_tools_are_rejected() -> None:
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(tools=[{"type": "web_search"}]))
    assert info.value.body["param"] == "tools[0]"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "now"}}, {"type": "tool", "name": "now"}),
    ],
    ids=["auto", "none", "required", "named"],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    out = translate_request(body(tools=TOOLS, tool_choice=choice))
    assert out["tool_choice"] == expected
    assert len(out["tools"]) == 2


def test_tool_choice_without_tools_is_dropped() -> None:
    out = translate_request(body(tool_choice="auto"))
    assert "tool_choice" not in out
    assert "tools" not in out


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    out = translate_request(body(tools=TOOLS, parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = translate_request(body(tools=TOOLS, tool_choice="required", parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_invalid_tool_choice_is_rejected() -> None:
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(tools=TOOLS, tool_choice="sometimes"))
    assert info.value.body["param"] == "tool_choice"


@pytest.mark.parametrize(
    ("stop", "expected"), [("END", ["END"]), (["a", "b"], ["a", "b"])], ids=["str", "list"]
)
def test_stop_becomes_stop_sequences(stop: Any, expected: list[str]) -> None:
    assert translate_request(body(stop=stop))["stop_sequences"] == expected


@pytest.mark.parametrize("stop", ["", " ", "\n", ["END", "\n"], ["\t \r\n"], ["END", ""]])
def test_blank_stop_sequences_are_refused_before_sending(stop: Any) -> None:
    """Anthropic answers 400 to a stop sequence without non-whitespace characters."""
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(stop=stop))
    assert info.value.status == 422
    assert info.value.body["param"] == "stop"


def test_stop_sequences_with_surrounding_whitespace_are_kept() -> None:
    out = translate_request(body(stop=["\n\nHuman:", " END "]))
    assert out["stop_sequences"] == ["\n\nHuman:", " END "]
    assert "stop_sequences" not in translate_request(body(stop=[]))


@pytest.mark.parametrize(("asked", "sent"), [(0, 0.0), (0.3, 0.3), (1, 1.0), (1.7, 1.0), (2, 1.0)])
def test_temperature_is_clamped_to_anthropics_range(asked: float, sent: float) -> None:
    assert translate_request(body(temperature=asked))["temperature"] == sent


def test_top_p_is_dropped_when_temperature_is_set() -> None:
    """Recent Claude models reject temperature and top_p together (400)."""
    out = translate_request(body(temperature=0.5, top_p=0.9))
    assert out["temperature"] == 0.5
    assert "top_p" not in out


def test_top_p_user_and_stream() -> None:
    out = translate_request(body(top_p=0.9, user="end-user-42", stream=True))
    assert out["top_p"] == 0.9
    assert out["metadata"] == {"user_id": "end-user-42"}
    assert out["stream"] is True
    assert "stream" not in translate_request(body(stream=False))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"max_completion_tokens": 64}, 64),
        ({"max_completion_tokens": None, "max_tokens": 32}, 32),
    ],
    ids=["max_completion_tokens", "max_tokens"],
)
def test_the_gateways_ceiling_becomes_max_tokens(extra: dict[str, Any], expected: int) -> None:
    out = translate_request(body(**extra))
    assert out["max_tokens"] == expected
    assert "max_completion_tokens" not in out


def test_openai_only_parameters_are_not_sent() -> None:
    out = translate_request(
        body(
            n=1,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            logprobs=True,
            response_format={"type": "text"},
            stream_options={"include_usage": True},
            metadata={"k": "v"},
            reasoning_effort="high",
            logit_bias={},
            functions=[],
            function_call=None,
            modalities=["text"],
            audio=None,
        )
    )
    assert set(out) == {"model", "messages", "max_tokens"}


FUNCTION = {"name": "get_weather", "parameters": WEATHER_SCHEMA}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"functions": [FUNCTION]}, "functions"),
        ({"functions": [FUNCTION], "function_call": {"name": "get_weather"}}, "functions"),
        ({"function_call": {"name": "get_weather"}}, "function_call"),
        ({"function_call": "auto"}, "function_call"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"modalities": ["audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ],
    ids=[
        "logit_bias",
        "functions",
        "functions+function_call",
        "function_call",
        "function_call-auto",
        "modalities",
        "modalities+audio",
        "audio",
    ],
)
def test_parameters_it_cannot_honour_are_refused_not_dropped(
    extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(**extra))
    assert info.value.status == 422
    assert info.value.body["param"] == param
    assert param in info.value.body["message"]


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def test_json_object_is_asked_as_one_forced_tool() -> None:
    out = translate_request(body(response_format={"type": "json_object"}))
    assert out["tools"] == [
        {
            "name": JSON_TOOL,
            "description": "Give the answer as this tool's input.",
            "input_schema": {"type": "object"},
        }
    ]
    assert out["tool_choice"] == {"type": "tool", "name": JSON_TOOL}


def test_json_schema_becomes_the_tools_input_schema() -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "city", "description": "The city asked about.", "schema": SCHEMA},
    }
    out = translate_request(body(response_format=response_format))
    assert out["tools"] == [
        {"name": JSON_TOOL, "description": "The city asked about.", "input_schema": SCHEMA}
    ]
    assert out["tool_choice"] == {"type": "tool", "name": JSON_TOOL}


@pytest.mark.parametrize(
    ("response_format", "extra"),
    [
        ({"type": "json_object"}, {"tools": [{"type": "function", "function": {"name": "f"}}]}),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}, {}),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, {}),
        ({"type": "yaml"}, {}),
        ("json", {}),
    ],
)
def test_json_modes_it_cannot_honour_are_refused_not_dropped(
    response_format: Any, extra: dict[str, Any]
) -> None:
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(response_format=response_format, **extra))
    assert info.value.body["param"] == "response_format"


def test_a_json_answer_is_the_forced_tools_input() -> None:
    message = {
        "id": "msg_1",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Here it is:"},
            {"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 20, "output_tokens": 9},
    }
    completion, _ = translate_response(message, created=1, json_answer=True)
    choice = completion["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"city": "Paris"}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    # Without JSON mode the same answer is a tool call, as before.
    plain = translate_response(message, created=1)[0]["choices"][0]
    assert plain["message"]["tool_calls"][0]["function"]["name"] == JSON_TOOL
    assert plain["finish_reason"] == "tool_calls"


def test_a_streamed_json_answer_is_content_at_every_split() -> None:
    """The recorded tool-use stream, its tool renamed to the answer tool: the JSON
    fragments become content (the text around them does not), the stop is a stop."""
    raw = TOOL_FIXTURE.replace(b'"name":"get_weather"', b'"name":"' + JSON_TOOL.encode() + b'"')
    assert raw != TOOL_FIXTURE
    for size in (1, 7, 97, len(raw)):
        translator = AnthropicStreamTranslator(created=1, json_answer=True)
        chunks: list[StreamEvent] = []
        for piece in slices(raw, size):
            chunks += translator.feed(piece)
        chunks += translator.close()
        translator.check()
        assert json.loads(content(chunks)) == json.loads(TOOL_ARGS), size
        assert tool_calls(chunks) == {}
        assert finishes(chunks) == ["stop"]
        assert isinstance(chunks[-1], Usage)


def test_n_above_one_is_rejected() -> None:
    with pytest.raises(ValidationFailed) as info:
        translate_request(body(n=2))
    assert info.value.body["param"] == "n"


def test_the_input_body_is_not_modified() -> None:
    original = body(
        {"role": "system", "content": "s"},
        user("a"),
        user("b"),
        {"role": "assistant", "content": None, "tool_calls": [call("t1", "f", "{}")]},
        {"role": "tool", "tool_call_id": "t1", "content": "r"},
        tools=TOOLS,
        tool_choice="auto",
    )
    snapshot = copy.deepcopy(original)
    translate_request(original)
    assert original == snapshot


# ============================================================================ unary answer


def message(
    content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int
) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 11,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 3,
            **usage,
        },
    }


def test_text_answer() -> None:
    out, usage = translate_response(message([text("Hello"), text(" there")]), created=123)
    assert out == {
        "id": "msg_01",
        "object": "chat.completion",
        "created": 123,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "finish_reason": "stop",
            }
        ],
    }
    assert usage == Usage(input_tokens=11, output_tokens=3)
    assert usage.total_tokens == 14


def test_tool_use_answer() -> None:
    blocks = [
        text(TOOL_TEXT),
        {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ]
    out, _ = translate_response(message(blocks, "tool_use"))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == TOOL_TEXT
    assert choice["message"]["tool_calls"] == [
        {
            "id": TOOL_ID,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
        },
        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


def test_tool_use_only_answer_has_null_content() -> None:
    blocks = [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}]
    assert (
        translate_response(message(blocks, "tool_use"))[0]["choices"][0]["message"]["content"]
        is None
    )


def test_thinking_blocks_are_not_part_of_the_content() -> None:
    blocks = [{"type": "thinking", "thinking": "hmm", "signature": "sig"}, text("42")]
    assert translate_response(message(blocks))[0]["choices"][0]["message"]["content"] == "42"


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reasons(stop_reason: str | None, expected: str) -> None:
    assert finish_reason(stop_reason) == expected


def test_usage_with_cache_fields() -> None:
    usage = anthropic_usage(
        {
            "input_tokens": 50,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 3000,
            "output_tokens": 70,
        }
    )
    assert usage == Usage(
        input_tokens=4050,
        output_tokens=70,
        cached_input_tokens=3000,
        cache_creation_input_tokens=1000,
    )
    assert usage.total_tokens == 4120


def test_usage_tolerates_missing_and_null_fields() -> None:
    usage = anthropic_usage(
        {"input_tokens": 5, "cache_creation_input_tokens": None, "output_tokens": 2}
    )
    assert usage is not None
    assert usage.input_tokens == 5
    assert (usage.cached_input_tokens, usage.cache_creation_input_tokens) == (0, 0)


@pytest.mark.parametrize("answer", [None, [], {"type": "message"}, {"content": "text"}])
def test_invalid_answers_raise_value_error(answer: Any) -> None:
    with pytest.raises(ValueError, match="not an Anthropic message"):
        translate_response(answer)


# ============================================================================ errors


@pytest.mark.parametrize(
    ("status", "expected_status", "expected_type"),
    [
        (401, 422, "ByokKeyRejected"),
        (403, 422, "ByokKeyRejected"),
        (429, 429, "UpstreamRateLimited"),
        (400, 422, "ValidationFailed"),
        (413, 422, "ValidationFailed"),
        (500, 502, "UpstreamFailed"),
        (529, 502, "UpstreamFailed"),
    ],
)
def test_error_statuses(status: int, expected_status: int, expected_type: str) -> None:
    raw = json.dumps(
        {"type": "error", "error": {"type": "x", "message": "bad key sk-ant-api03-SECRETSECRET"}}
    ).encode()
    error = anthropic_error_for_status("claude", status, raw, {"Retry-After": "7"})
    assert type(error).__name__ == expected_type
    assert error.status == expected_status
    assert "SECRETSECRET" not in json.dumps(error.body)
    # Worth another attempt (or the next route): overload, rate limits, server errors.
    assert error.retryable is (status in (429, 500, 529))
    if status == 429:
        assert error.headers["Retry-After"] == "7"


def test_400_carries_the_providers_code_never_its_message() -> None:
    raw = json.dumps(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
        }
    ).encode()
    error = anthropic_error_for_status("claude", 400, raw, {})
    assert error.body["error"] == "validation_failed"
    assert error.body["message"] == "provider claude rejected the request (invalid_request_error)"
    assert "too big" not in error.body["message"]


# ============================================================================ streams


def run(raw: bytes, pieces: list[bytes] | None = None) -> list[StreamEvent]:
    """Translate a whole stream; raise its failure, if any."""
    translator = AnthropicStreamTranslator(created=1)
    out: list[StreamEvent] = []
    for piece in pieces if pieces is not None else [raw]:
        out += translator.feed(piece)
    out += translator.close()
    translator.check()
    return out


def slices(raw: bytes, size: int = 97) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def chunks_of(events: Sequence[StreamEvent]) -> list[dict[str, Any]]:
    """The chunks among the events (the translator emits no chunk with a usage)."""
    assert not any(isinstance(e, tuple) for e in events)
    return [e for e in events if isinstance(e, dict)]


def usages(events: Sequence[StreamEvent]) -> list[Usage]:
    return [e for e in events if isinstance(e, Usage)]


def final_usage(events: Sequence[StreamEvent]) -> Usage:
    """The stream's usage: one Usage event, the last."""
    assert usages(events) == [events[-1]], "one usage, last"
    assert isinstance(events[-1], Usage)
    return events[-1]


def content(events: Sequence[StreamEvent]) -> str:
    chunks = chunks_of(events)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finishes(events: Sequence[StreamEvent]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"]
        for c in chunks_of(events)
        if c["choices"] and c["choices"][0]["finish_reason"]
    ]


def tool_calls(events: Sequence[StreamEvent]) -> dict[int, dict[str, Any]]:
    """Tool-call deltas reassembled the way the OpenAI SDKs do."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks_of(events):
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                slot = calls.setdefault(delta["index"], {"id": None, "name": None, "arguments": ""})
                if delta.get("id"):
                    slot["id"] = delta["id"]
                function = delta.get("function") or {}
                if function.get("name"):
                    slot["name"] = function["name"]
                slot["arguments"] += function.get("arguments") or ""
    return calls


def check_text_fixture(events: list[StreamEvent]) -> None:
    chunks = chunks_of(events)
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == "msg_018E1hg8GoVTGEKQY3ovMcSJ"
        assert chunk["model"] == "claude-sonnet-4-5-20250929"
        assert chunk["created"] == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "2"}
    assert content(chunks) == "2"
    assert finishes(chunks) == ["stop"]
    assert all(c["choices"] for c in chunks)
    assert final_usage(events) == Usage(
        input_tokens=20,
        output_tokens=5,  # cumulative: not 1 + 5
        cached_input_tokens=0,
        cache_creation_input_tokens=0,
    )
    assert final_usage(events).total_tokens == 25
    assert len(events) == 3  # role + "2", finish, usage


def check_tool_fixture(events: list[StreamEvent]) -> None:
    chunks = chunks_of(events)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "I"}
    assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
    assert content(chunks) == TOOL_TEXT
    assert tool_calls(chunks) == {0: {"id": TOOL_ID, "name": "get_weather", "arguments": TOOL_ARGS}}
    starts = next(
        d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or ()
    )
    assert starts == {
        "index": 0,
        "id": TOOL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert finishes(chunks) == ["tool_calls"]
    usage = final_usage(events)
    assert usage.input_tokens == 377
    assert usage.output_tokens == 65
    assert usage.total_tokens == 442
    assert not any("usage" in c for c in chunks)


@pytest.mark.parametrize("size", [None, 97, 1])
def test_text_fixture(size: int | None) -> None:
    pieces = None if size is None else slices(TEXT_FIXTURE, size)
    check_text_fixture(run(TEXT_FIXTURE, pieces))


@pytest.mark.parametrize("size", [None, 97, 1])
def test_tool_use_fixture(size: int | None) -> None:
    pieces = None if size is None else slices(TOOL_FIXTURE, size)
    check_tool_fixture(run(TOOL_FIXTURE, pieces))


def test_text_fixture_split_at_every_byte() -> None:
    for at in range(len(TEXT_FIXTURE) + 1):
        check_text_fixture(run(TEXT_FIXTURE, [TEXT_FIXTURE[:at], TEXT_FIXTURE[at:]]))


def test_tool_use_fixture_split_at_every_byte() -> None:
    for at in range(len(TOOL_FIXTURE) + 1):
        check_tool_fixture(run(TOOL_FIXTURE, [TOOL_FIXTURE[:at], TOOL_FIXTURE[at:]]))


def test_usage_is_emitted_at_message_stop_without_waiting_for_the_end() -> None:
    translator = AnthropicStreamTranslator()
    chunks = translator.feed(TEXT_FIXTURE)
    assert translator.done
    assert final_usage(chunks).output_tokens == 5
    assert translator.feed(b"event: ping\ndata: {}\n\n") == []
    assert translator.close() == []


def test_tool_fixture_needs_close_for_its_unterminated_message_stop() -> None:
    # The recording has no blank line after message_stop: the event only completes at EOF.
    translator = AnthropicStreamTranslator()
    chunks = translator.feed(TOOL_FIXTURE)
    assert not translator.done
    assert not usages(chunks)
    assert all("usage" not in c for c in chunks_of(chunks))
    final = translator.close()
    assert translator.done
    assert final_usage(final).output_tokens == 65


def test_usage_without_message_stop() -> None:
    cut = TEXT_FIXTURE[: TEXT_FIXTURE.index(b"event: message_stop")]
    check_text_fixture(run(cut, slices(cut)))


def test_cache_usage_in_a_stream() -> None:
    raw = TEXT_FIXTURE.replace(
        b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation"',
        b'"cache_creation_input_tokens":1000,"cache_read_input_tokens":3000,"cache_creation"',
    )
    assert raw != TEXT_FIXTURE
    usage = final_usage(run(raw))
    # message_delta repeats the input side, lower here: the higher count is billed.
    assert usage.input_tokens == 4020
    assert (usage.cached_input_tokens, usage.cache_creation_input_tokens) == (3000, 1000)
    assert usage.output_tokens == 5

    only_start = raw.replace(
        b'"usage":{"input_tokens":20,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":5}',
        b'"usage":{"output_tokens":5}',
    )
    assert only_start != raw
    usage = final_usage(run(only_start))
    assert usage.input_tokens == 4020
    assert (usage.cached_input_tokens, usage.cache_creation_input_tokens) == (3000, 1000)
    assert usage.output_tokens == 5


def test_a_stream_cut_before_message_delta_fails() -> None:
    cut = TEXT_FIXTURE[: TEXT_FIXTURE.index(b"event: message_delta")]
    translator = AnthropicStreamTranslator()
    chunks = translator.feed(cut)
    assert content(chunks) == "2"
    assert translator.close() == []
    with pytest.raises(UpstreamStreamError) as info:
        translator.check()
    assert info.value.code == "upstream_error"
    assert not info.value.declared


def test_overloaded_right_after_message_start_fails_before_the_first_chunk() -> None:
    """Anthropic's usual overload: 200, message_start, then the error frame. No chunk has
    been produced, so the gateway can still answer with a status (or retry)."""
    cut = TEXT_FIXTURE.index(b"event: content_block_start")
    translator = AnthropicStreamTranslator()
    assert translator.feed(TEXT_FIXTURE[:cut] + OVERLOADED) == []
    with pytest.raises(UpstreamStreamError) as info:
        translator.check()
    assert info.value.declared
    assert info.value.message == "the provider reported an error (overloaded_error)"


def test_error_frames_do_not_leak_the_provider_key() -> None:
    key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789"
    frame = (
        b'event: error\ndata: {"type":"error","error":{"type":"authentication_error",'
        b'"message":"invalid x-api-key ' + key[-12:].encode() + b'"}}\n\n'
    )
    translator = AnthropicStreamTranslator(secret=key)
    translator.feed(frame)
    with pytest.raises(UpstreamStreamError) as info:
        translator.check()
    assert key[-12:] not in info.value.message
    assert key[-8:] not in info.value.message


@pytest.mark.parametrize(
    ("before", "text_seen", "args_seen"),
    [
        (b"'ll check", "I", None),
        (b'"partial_json":"ar"', TOOL_TEXT, '{"location": "P'),
        (b"event: message_delta", TOOL_TEXT, TOOL_ARGS),
    ],
    ids=["mid_text", "mid_tool_args", "before_message_delta"],
)
def test_overloaded_error_frame_mid_stream(
    before: bytes, text_seen: str, args_seen: str | None
) -> None:
    cut = TOOL_FIXTURE.rindex(b"event:", 0, TOOL_FIXTURE.index(before))
    raw = TOOL_FIXTURE[:cut] + OVERLOADED + TOOL_FIXTURE[cut:]
    translator = AnthropicStreamTranslator()
    chunks = translator.feed(raw)
    # The chunks before the error frame are kept; nothing after it is translated.
    assert chunks_of(chunks)[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content(chunks) == text_seen
    calls = tool_calls(chunks)
    assert (calls[0]["arguments"] if calls else None) == args_seen
    assert not usages(chunks)
    assert all("usage" not in c for c in chunks_of(chunks))
    assert not finishes(chunks)
    with pytest.raises(UpstreamStreamError) as info:
        translator.check()
    assert info.value.declared
    assert info.value.code == "upstream_error"
    assert info.value.message == "the provider reported an error (overloaded_error)"
    with pytest.raises(UpstreamStreamError):
        translator.feed(b"more")
    with pytest.raises(UpstreamStreamError):
        translator.close()


def test_overloaded_error_frame_in_97_byte_slices() -> None:
    raw = TEXT_FIXTURE[: TEXT_FIXTURE.index(b"event: content_block_stop")] + OVERLOADED
    with pytest.raises(UpstreamStreamError) as info:
        run(raw, slices(raw))
    assert info.value.declared
    assert info.value.message == "the provider reported an error (overloaded_error)"


def test_error_frame_as_the_first_event() -> None:
    with pytest.raises(UpstreamStreamError) as info:
        run(OVERLOADED)
    assert info.value.declared


def test_invalid_json_fails_the_stream() -> None:
    with pytest.raises(UpstreamStreamError) as info:
        run(b"event: message_start\ndata: {nope\n\n")
    assert not info.value.declared


def test_two_tool_blocks_get_tool_indexes_from_zero() -> None:
    def event(data: dict[str, Any]) -> bytes:
        return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()

    start = {
        "type": "message_start",
        "message": {"id": "m", "model": "c", "usage": {"input_tokens": 9, "output_tokens": 1}},
    }
    raw = b"".join(
        [
            event(start),
            event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "ok"},
                }
            ),
            event({"type": "content_block_stop", "index": 0}),
            event(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '{"x":'},
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": "1}"},
                }
            ),
            event({"type": "content_block_stop", "index": 1}),
            event(
                {
                    "type": "content_block_start",
                    "index": 2,
                    "content_block": {"type": "tool_use", "id": "b", "name": "g", "input": {}},
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": "{}"},
                }
            ),
            event({"type": "content_block_stop", "index": 2}),
            event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use"},
                    "usage": {"output_tokens": 30},
                }
            ),
            event({"type": "message_stop"}),
        ]
    )
    chunks = run(raw, slices(raw, 13))
    assert tool_calls(chunks) == {
        0: {"id": "a", "name": "f", "arguments": '{"x":1}'},
        1: {"id": "b", "name": "g", "arguments": "{}"},
    }
    assert content(chunks) == "ok"
    assert final_usage(chunks).input_tokens == 9
    assert final_usage(chunks).output_tokens == 30
