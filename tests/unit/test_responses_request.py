"""Unit tests for gateway.surfaces.responses: Responses create body -> chat body.

Every mapping is checked against the chat body it must produce, and that body against
the pipeline's own checks (gateway.validation and gateway.params's allow-list); every
refusal is checked for its 422 and the Responses field it names.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ValidationFailed
from gateway.params import UNDERSTOOD, refuse_unknown
from gateway.surfaces.responses import (
    HOSTED_TOOLS,
    ResponsesRequest,
    continue_from,
    parse_request,
)
from gateway.validation import validate_chat_request

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def parse(**body: Any) -> ResponsesRequest:
    body.setdefault("model", "default")
    body.setdefault("input", "Hi")
    request = parse_request(body)
    # What the pipeline would do with the translation: nothing refused.
    refuse_unknown(request.chat, frozenset())
    assert request.chat.keys() <= UNDERSTOOD
    validate_chat_request(request.chat)
    return request


def refused(body: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse_request(body)
    assert info.value.status == 422
    return info.value


def param_of(body: Any) -> str | None:
    param: str | None = refused(body).body["param"]
    return param


def item(role: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": content, **extra}


# --------------------------------------------------------------------------- input


def test_string_input_is_one_user_message() -> None:
    request = parse(input="What is the capital of the UK?")
    assert request.chat == {
        "model": "default",
        "messages": [{"role": "user", "content": "What is the capital of the UK?"}],
    }
    assert request.messages == request.chat["messages"]
    assert request.stream is False
    assert request.store is True
    assert request.previous_response_id is None


def test_message_items_of_every_role() -> None:
    request = parse(
        input=[
            item("developer", "Be brief."),
            item("system", [{"type": "input_text", "text": "Answer in English."}]),
            {"role": "user", "content": "Hi"},  # an EasyInputMessage: no type
            item("assistant", [{"type": "output_text", "text": "Hello", "annotations": []}]),
            item(
                "user",
                [
                    {"type": "input_text", "text": "What is in "},
                    {"type": "input_text", "text": "this picture?"},
                ],
            ),
        ]
    )
    assert request.chat["messages"] == [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in "},
                {"type": "text", "text": "this picture?"},
            ],
        },
    ]


def test_output_message_passed_back_as_input() -> None:
    """A previous response's output items (id, status, annotations, phase) as input."""
    output = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "phase": "final_answer",
        "content": [
            {"type": "output_text", "text": "Paris", "annotations": [], "logprobs": []},
            {"type": "output_text", "text": ".", "annotations": []},
        ],
    }
    request = parse(input=[item("user", "Capital of France?"), output, item("user", "Sure?")])
    assert request.chat["messages"][1] == {"role": "assistant", "content": "Paris."}


def test_assistant_refusal_part_is_a_chat_refusal_part() -> None:
    request = parse(
        input=[
            item("user", "x"),
            item("assistant", [{"type": "refusal", "refusal": "I can't help with that."}]),
            item("user", "y"),
        ]
    )
    assert request.chat["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": "I can't help with that."}],
    }


def test_input_image_url_and_detail() -> None:
    request = parse(
        input=[
            item(
                "user",
                [
                    {"type": "input_text", "text": "Describe"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,iVBORw0KGgo=",
                        "detail": "low",
                    },
                ],
            )
        ]
    )
    assert request.chat["messages"][0]["content"] == [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        },
    ]


def test_input_file_data_is_a_chat_file_part() -> None:
    part = {
        "type": "input_file",
        "file_data": "data:application/pdf;base64,JVBERi0=",
        "filename": "a.pdf",
    }
    request = parse(input=[item("user", [part])])
    assert request.chat["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": part["file_data"], "filename": "a.pdf"}}
    ]


def test_function_calls_and_outputs() -> None:
    request = parse(
        input=[
            item("user", "Weather in Paris and Rome?"),
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city":"Paris"}',
                "status": "completed",
            },
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "21C"}],
            },
        ]
    )
    assert request.chat["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
    ]


def test_function_call_after_assistant_text_joins_that_turn() -> None:
    request = parse(
        input=[
            item("user", "Weather?"),
            item("assistant", "Let me check."),
            {"type": "reasoning", "id": "rs_1", "summary": []},  # dropped
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ]
    )
    assert request.chat["messages"][1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    }
    assert len(request.chat["messages"]) == 3


def test_tool_output_of_several_text_parts_stays_a_list() -> None:
    request = parse(
        input=[
            item("user", "x"),
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_text", "text": "b"},
                ],
            },
        ]
    )
    assert request.chat["messages"][2]["content"] == [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]


def test_instructions_lead_as_a_system_message() -> None:
    request = parse(instructions="You are terse.", input="Hi")
    assert request.chat["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ]
    assert request.instructions == "You are terse."
    assert request.messages == [{"role": "user", "content": "Hi"}]  # stored without them
    assert request.echo["instructions"] == "You are terse."


# --------------------------------------------------------------------------- parameters


def test_tools_flat_to_nested() -> None:
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "name": "weather",
            "description": "Weather of a city",
            "parameters": WEATHER,
            "strict": True,
        },
        {"type": "function", "name": "now"},
    ]
    request = parse(tools=tools, tool_choice="required", parallel_tool_calls=False)
    assert request.chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "parameters": WEATHER,
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]
    assert request.chat["tool_choice"] == "required"
    assert request.chat["parallel_tool_calls"] is False
    assert request.echo["tools"] == [
        {**tools[0]},
        {
            "type": "function",
            "name": "now",
            "description": None,
            "parameters": None,
            "strict": None,
        },
    ]
    assert request.echo["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "chat"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "now"}, {"type": "function", "function": {"name": "now"}}),
    ],
)
def test_tool_choice(choice: Any, chat: Any) -> None:
    request = parse(tools=[{"type": "function", "name": "now"}], tool_choice=choice)
    assert request.chat["tool_choice"] == chat
    assert request.echo["tool_choice"] == choice


def test_tool_choice_echo_is_normalised() -> None:
    choice = {"type": "function", "name": "now", "note": "extra"}
    request = parse(tools=[{"type": "function", "name": "now"}], tool_choice=choice)
    assert request.echo["tool_choice"] == {"type": "function", "name": "now"}
    assert parse().echo["tool_choice"] == "auto"


def test_tool_choice_and_parallel_calls_without_tools_are_not_sent() -> None:
    # Chat-completions refuses both without tools.
    request = parse(tool_choice="auto", parallel_tool_calls=True)
    assert "tool_choice" not in request.chat
    assert "parallel_tool_calls" not in request.chat


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "now"}])
def test_tool_choice_asking_for_a_tool_without_tools_is_refused(choice: Any) -> None:
    assert param_of({"input": "x", "tool_choice": choice}) == "tool_choice"


def test_text_format_json_schema() -> None:
    fmt = {
        "type": "json_schema",
        "name": "weather",
        "schema": WEATHER,
        "strict": True,
        "description": "A city",
    }
    request = parse(text={"format": fmt, "verbosity": "low"})
    assert request.chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "weather",
            "schema": WEATHER,
            "strict": True,
            "description": "A city",
        },
    }
    assert request.chat["verbosity"] == "low"
    assert request.echo["text"] == {"format": fmt, "verbosity": "low"}


def test_text_format_json_object_and_text() -> None:
    assert parse(text={"format": {"type": "json_object"}}).chat["response_format"] == {
        "type": "json_object"
    }
    plain = parse(text={"format": {"type": "text"}})
    assert "response_format" not in plain.chat
    assert plain.echo["text"] == {"format": {"type": "text"}}


def test_sampling_and_limits() -> None:
    request = parse(
        max_output_tokens=256,
        temperature=0.2,
        top_p=0.9,
        reasoning={"effort": "low", "summary": "auto"},
        user="u-1",
        safety_identifier="hash-1",
        service_tier="flex",
        prompt_cache_key="k",
    )
    chat = request.chat
    assert chat["max_completion_tokens"] == 256
    assert "max_output_tokens" not in chat  # a length field the gateway refuses in chat
    assert (chat["temperature"], chat["top_p"]) == (0.2, 0.9)
    assert chat["reasoning_effort"] == "low"
    assert (chat["user"], chat["safety_identifier"]) == ("u-1", "hash-1")
    assert (chat["service_tier"], chat["prompt_cache_key"]) == ("flex", "k")
    assert validate_chat_request(chat).max_tokens == 256
    assert request.echo["reasoning"] == {"effort": "low", "summary": "auto"}
    assert request.echo["max_output_tokens"] == 256


def test_kept_fields_are_not_sent() -> None:
    request = parse(
        store=False,
        metadata={"team": "search"},
        previous_response_id="resp_abc",
        truncation="auto",
        include=["reasoning.encrypted_content", "message.input_image.image_url"],
        stream_options={"include_obfuscation": False},
        background=False,
    )
    for name in ("store", "metadata", "previous_response_id", "truncation", "include"):
        assert name not in request.chat
    assert request.store is False
    assert request.metadata == {"team": "search"}
    assert request.previous_response_id == "resp_abc"
    assert request.echo["truncation"] == "auto"
    assert request.echo["store"] is False


def test_stream_asks_for_usage() -> None:
    chat = parse(stream=True).chat
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert validate_chat_request(chat).include_usage is True


def test_nulls_are_absent() -> None:
    request = parse(
        instructions=None, tools=None, text=None, temperature=None, prompt=None, metadata=None
    )
    assert request.chat == {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


def test_model_is_optional() -> None:
    request = parse_request({"input": "Hi"})
    assert request.model is None
    assert "model" not in request.chat


def test_previous_response_id_without_input() -> None:
    request = parse_request({"previous_response_id": "resp_1"})
    assert request.messages == []


# --------------------------------------------------------------------------- continue_from


def test_continue_from_prepends_stored_turns_after_this_instructions() -> None:
    stored = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
    ]
    request = parse(instructions="Be terse.", input="What is my name?", previous_response_id="r1")
    chat = continue_from(stored, request)
    assert chat["messages"] == [
        {"role": "system", "content": "Be terse."},
        *stored,
        {"role": "user", "content": "What is my name?"},
    ]
    assert chat["model"] == "default"
    assert request.chat["messages"][0]["role"] == "system"  # the request is unchanged
    assert len(request.chat["messages"]) == 2


def test_continue_from_answers_stored_tool_calls() -> None:
    stored: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
    ]
    request = parse(input=[{"type": "function_call_output", "call_id": "c1", "output": "sunny"}])
    chat = continue_from(stored, request)
    assert chat["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def test_continue_from_nothing_is_refused() -> None:
    request = parse_request({"previous_response_id": "resp_1"})
    with pytest.raises(ValidationFailed) as info:
        continue_from([], request)
    assert info.value.body["param"] == "input"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", sorted(HOSTED_TOOLS))
def test_hosted_tools_are_refused(kind: str) -> None:
    error = refused({"input": "x", "tools": [{"type": "function", "name": "f"}, {"type": kind}]})
    assert error.body["param"] == "tools[1].type"
    assert "refused: priced by the provider apart from tokens" in error.message


def test_the_briefs_hosted_tools_are_all_refused() -> None:
    for kind in (
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "computer_use_preview",
        "image_generation",
        "mcp",
        "local_shell",
    ):
        assert kind in HOSTED_TOOLS


@pytest.mark.parametrize("kind", ["custom", "namespace", "apply_patch", None])
def test_other_tool_types_are_refused(kind: Any) -> None:
    assert param_of({"input": "x", "tools": [{"type": kind, "name": "f"}]}) == "tools[0].type"


def test_hosted_tool_choice_is_refused() -> None:
    body = {"input": "x", "tools": [{"type": "function", "name": "f"}]}
    error = refused({**body, "tool_choice": {"type": "web_search_preview"}})
    assert error.body["param"] == "tool_choice.type"
    assert "priced by the provider" in error.message
    assert param_of({**body, "tool_choice": "any"}) == "tool_choice"
    assert param_of({**body, "tool_choice": {"type": "allowed_tools"}}) == "tool_choice"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
            "input[0].content[1]",
        ),
        ({"type": "input_image", "file_id": "file-1"}, "input[0].content[1].file_id"),
        ({"type": "input_image"}, "input[0].content[1].image_url"),
        (
            {"type": "input_image", "image_url": "https://x", "detail": "ultra"},
            "input[0].content[1].detail",
        ),
        ({"type": "input_file", "file_id": "file-1"}, "input[0].content[1].file_id"),
        ({"type": "input_file", "file_url": "https://x/a.pdf"}, "input[0].content[1].file_url"),
        ({"type": "output_text", "text": "x"}, "input[0].content[1].type"),
        ({"type": "input_text", "text": 3}, "input[0].content[1].text"),
        ("text", "input[0].content[1]"),
    ],
)
def test_bad_user_parts_are_refused(part: Any, param: str) -> None:
    body = {"input": [item("user", [{"type": "input_text", "text": "hi"}, part])]}
    assert param_of(body) == param


def test_audio_is_refused_as_audio() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    assert "audio" in refused({"input": [item("user", [part])]}).message


@pytest.mark.parametrize(
    ("role", "part"),
    [
        ("assistant", {"type": "input_text", "text": "x"}),
        ("system", {"type": "input_image", "image_url": "https://x"}),
        ("developer", {"type": "output_text", "text": "x"}),
    ],
)
def test_parts_of_the_wrong_role_are_refused(role: str, part: Any) -> None:
    assert param_of({"input": [item(role, [part])]}) == "input[0].content[0].type"


@pytest.mark.parametrize(
    ("entry", "param"),
    [
        ({"type": "web_search_call", "id": "ws_1"}, "input[1].type"),
        ({"type": "item_reference", "id": "msg_1"}, "input[1].type"),
        ({"type": "computer_call_output", "call_id": "c", "output": {}}, "input[1].type"),
        ({"role": "tool", "content": "x"}, "input[1].role"),
        ({"type": "message", "role": "user"}, "input[1].content"),
        ({"type": "message", "role": "user", "content": 5}, "input[1].content"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[1].call_id"),
        ({"type": "function_call", "call_id": "c", "arguments": "{}"}, "input[1].name"),
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}},
            "input[1].arguments",
        ),
        ({"type": "function_call_output", "output": "x"}, "input[1].call_id"),
        ({"type": "function_call_output", "call_id": "c", "output": 1}, "input[1].output"),
        (
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_image", "image_url": "https://x"}],
            },
            "input[1].output[0]",
        ),
        ("hello", "input[1]"),
    ],
)
def test_bad_items_are_refused(entry: Any, param: str) -> None:
    assert param_of({"input": [item("user", "hi"), entry]}) == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": None}, "input"),
        ({}, "input"),
        ({"input": "x", "model": ""}, "model"),
        ({"input": "x", "model": 1}, "model"),
        ({"input": "x", "instructions": ["x"]}, "instructions"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "top_p": 1.5}, "top_p"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "store": 1}, "store"),
        ({"input": "x", "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"input": "x", "tools": {}}, "tools"),
        ({"input": "x", "tools": ["f"]}, "tools[0]"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": []}]},
            "tools[0].parameters",
        ),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "strict": "y"}]},
            "tools[0].strict",
        ),
        ({"input": "x", "text": "json"}, "text"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "text.format.schema",
        ),
        ({"input": "x", "text": {"stop": "x"}}, "text.stop"),
        ({"input": "x", "reasoning": "high"}, "reasoning"),
        ({"input": "x", "reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"input": "x", "metadata": {"a": 1}}, "metadata"),
        ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"input": "x", "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"input": "x", "metadata": {"k": "v" * 513}}, "metadata"),
        ({"input": "x", "truncation": "middle"}, "truncation"),
        ({"input": "x", "include": "all"}, "include"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"input": "x", "include": ["reasoning.encrypted_content", "secrets"]}, "include[1]"),
        ({"input": "x", "stream_options": {"include_usage": True}}, "stream_options.include_usage"),
        ({"input": "x", "previous_response_id": ""}, "previous_response_id"),
        ({"input": "x", "service_tier": "priority"}, "service_tier"),
    ],
)
def test_bad_parameters_are_refused(body: dict[str, Any], param: str) -> None:
    assert param_of(body) == param


@pytest.mark.parametrize(
    "name",
    [
        "prompt",
        "conversation",
        "context_management",
        "max_tool_calls",
        "top_logprobs",
        "prompt_cache_retention",
        "moderation",
    ],
)
def test_known_unsupported_fields_are_refused(name: str) -> None:
    error = refused({"input": "x", name: {"id": "x"}})
    assert error.body["param"] == name
    assert "not supported" in error.message


def test_background_true_is_refused() -> None:
    assert param_of({"input": "x", "background": True}) == "background"
    assert param_of({"input": "x", "background": 0}) == "background"


@pytest.mark.parametrize(
    "name", ["max_tokens", "n", "messages", "num_predict", "frequency_penalty", "seed", "stop"]
)
def test_unknown_fields_are_refused_by_name(name: str) -> None:
    error = refused({"input": "x", name: 1})
    assert error.body["param"] == name
    assert error.message.startswith(f"unknown parameter {name!r}")


def test_body_must_be_an_object() -> None:
    assert param_of([]) is None


def test_refusals_do_not_echo_request_values() -> None:
    secret = "sk-live-0123456789abcdef"
    bodies: list[dict[str, Any]] = [
        {"input": [{"type": secret}]},
        {"input": [{"role": secret, "content": "x"}]},
        {"input": "x", "tools": [{"type": secret}]},
        {"input": "x", "tool_choice": secret},
        {"input": "x", "include": [secret]},
        {"input": "x", "metadata": {secret * 4: "v"}},
        {"input": "x", "truncation": secret},
        {"input": "x", "text": {"format": {"type": secret}}},
        {"input": [item("user", [{"type": "input_image", "image_url": "x", "detail": secret}])]},
    ]
    for body in bodies:
        error = refused(body)
        assert secret not in error.message
        assert secret not in str(error.body["param"])
