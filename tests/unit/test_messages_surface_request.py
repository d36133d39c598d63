"""Unit tests for gateway.surfaces.messages, request side: an Anthropic Messages body
in, the gateway's chat-completions body out (every translated body is also checked
against the chat pipeline's own validation and parameter allow-list), and every
refusal naming its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.errors import ValidationFailed
from gateway.params import refuse_unknown
from gateway.surfaces.messages import (
    DEFAULT_IMAGE_BOUND,
    MessagesRequest,
    count_tokens_estimate,
    parse_count_tokens,
    parse_request,
)
from gateway.usage import PER_MESSAGE_TOKENS, PER_REQUEST_TOKENS, input_token_bound
from gateway.validation import validate_chat_request

PNG = "iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 256,
        "messages": list(messages) or [{"role": "user", "content": "Hi"}],
        **extra,
    }


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def parse(raw: dict[str, Any], headers: dict[str, str] | None = None) -> MessagesRequest:
    """parse_request, and the chat pipeline's checks on what it produced."""
    before = copy.deepcopy(raw)
    request = parse_request(raw, headers or {})
    assert raw == before, "the Messages body is kept as received"
    assert request.body is raw
    validate_chat_request(request.chat_body)
    refuse_unknown(request.chat_body, frozenset())
    return request


def chat(raw: dict[str, Any]) -> dict[str, Any]:
    return parse(raw).chat_body


def refused(raw: Any, param: str | None, words: str = "") -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse_request(raw, {})
    error = info.value
    assert error.status == 422
    assert error.body["param"] == param, error.body
    assert words in error.message, error.message
    return error


# ============================================================================ basics


def test_minimal_body() -> None:
    request = parse(body())
    assert request.chat_body == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 256,
    }
    assert request.model == "claude-x"
    assert request.max_tokens == 256
    assert request.stream is False
    assert request.native_only == {}
    assert request.dropped == ()
    request.refuse_for_chat()  # nothing native-only: no refusal


def test_stream_true_and_false() -> None:
    streamed = parse(body(stream=True))
    assert streamed.stream is True
    assert streamed.chat_body["stream"] is True
    assert validate_chat_request(streamed.chat_body).stream is True
    assert "stream" not in chat(body(stream=False))


def test_max_tokens_is_the_chat_max_completion_tokens() -> None:
    request = parse(body(max_tokens=77))
    assert validate_chat_request(request.chat_body).max_tokens == 77
    assert "max_tokens" not in request.chat_body


@pytest.mark.parametrize("value", [None, 0, -1, 1.5, "10", True])
def test_max_tokens_required_positive_integer(value: Any) -> None:
    raw = body()
    if value is None:
        del raw["max_tokens"]
    else:
        raw["max_tokens"] = value
    refused(raw, "max_tokens")


@pytest.mark.parametrize("value", [None, "", 3, ["m"]])
def test_model_required(value: Any) -> None:
    raw = body()
    if value is None:
        del raw["model"]
    else:
        raw["model"] = value
    refused(raw, "model")


def test_body_must_be_an_object() -> None:
    refused([1, 2], None, "JSON object")


def test_stream_must_be_boolean() -> None:
    refused(body(stream="yes"), "stream")


def test_unknown_top_level_fields_are_refused_by_name() -> None:
    error = refused(body(speed="fast", inference_geo="us"), "inference_geo", "unknown parameter")
    assert "'speed'" in error.message
    refused(body(n=2), "n")
    refused(body(max_completion_tokens=5), "max_completion_tokens")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("mcp_servers", [{"type": "url", "url": "https://mcp.example", "name": "x"}]),
        ("container", "container_123"),
    ],
)
def test_priced_apart_top_level_fields(name: str, value: Any) -> None:
    refused(body(**{name: value}), name, "priced apart")


# ============================================================================ headers


def test_anthropic_headers_are_kept() -> None:
    request = parse(
        body(),
        {
            "Anthropic-Version": "2023-06-01",
            "anthropic-beta": "prompt-caching-2024-07-31, tools-2024-04-04,,",
        },
    )
    assert request.anthropic_version == "2023-06-01"
    assert request.anthropic_beta == ("prompt-caching-2024-07-31", "tools-2024-04-04")


def test_repeated_beta_headers_are_all_kept_once() -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict([("anthropic-beta", "a,b"), ("Anthropic-Beta", "b, c")])
    request = parse_request(body(), headers)
    assert request.anthropic_beta == ("a", "b", "c")
    assert request.anthropic_version is None


# ============================================================================ system


def test_system_string() -> None:
    messages = chat(body(system="Be terse."))["messages"]
    assert messages[0] == {"role": "system", "content": "Be terse."}
    assert messages[1] == {"role": "user", "content": "Hi"}


def test_empty_system_is_no_message() -> None:
    assert chat(body(system=""))["messages"] == [{"role": "user", "content": "Hi"}]
    assert chat(body(system=[]))["messages"] == [{"role": "user", "content": "Hi"}]


def test_system_blocks_keep_their_cache_marks_on_the_request_only() -> None:
    request = parse(
        body(
            system=[
                text("You are a pirate."),
                text("Long context.", cache_control={"type": "ephemeral", "ttl": "1h"}),
            ]
        )
    )
    assert request.chat_body["messages"][0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "You are a pirate."},
            {"type": "text", "text": "Long context."},
        ],
    }
    assert request.dropped == ("system[1].cache_control",)
    assert request.body["system"][1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert request.native_only == {}  # a cache mark changes the cost, not the answer


def test_one_system_block_is_a_string() -> None:
    assert chat(body(system=[text("Only")]))["messages"][0] == {
        "role": "system",
        "content": "Only",
    }


@pytest.mark.parametrize(
    ("system", "param"),
    [
        (5, "system"),
        ([{"type": "image", "source": {}}], "system[0].type"),
        (["plain"], "system[0]"),
        ([{"type": "text"}], "system[0].text"),
        ([text("x", cache_control={"type": "persistent"})], "system[0].cache_control.type"),
        (
            [text("x", cache_control={"type": "ephemeral", "ttl": "2h"})],
            "system[0].cache_control.ttl",
        ),
        (
            [text("x", cache_control={"type": "ephemeral", "scope": "g"})],
            "system[0].cache_control.scope",
        ),
        ([text("x", extra=1)], "system[0].extra"),
    ],
)
def test_bad_system(system: Any, param: str) -> None:
    refused(body(system=system), param)


def test_top_level_cache_control_is_dropped_for_chat() -> None:
    request = parse(body(cache_control={"type": "ephemeral"}))
    assert request.dropped == ("cache_control",)
    assert "cache_control" not in request.chat_body
    refused(body(cache_control={"type": "x"}), "cache_control.type")


# ============================================================================ messages


def test_user_string_and_text_blocks() -> None:
    messages = chat(
        body(user("plain"), assistant("reply"), user([text("a"), text(""), text("b")]))
    )["messages"]
    assert messages == [
        {"role": "user", "content": "plain"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]


def test_user_text_block_cache_mark_dropped() -> None:
    request = parse(body(user([text("doc", cache_control={"type": "ephemeral"})])))
    assert request.chat_body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "doc"}]}
    ]
    assert request.dropped == ("messages[0].content[0].cache_control",)


def test_image_base64_becomes_a_data_url() -> None:
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    messages = chat(body(user([block, text("What is it?")])))["messages"]
    assert messages[0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "What is it?"},
    ]


def test_image_url_source() -> None:
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
    messages = chat(body(user([block])))["messages"]
    assert messages[0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
    ]


@pytest.mark.parametrize(
    ("source", "param"),
    [
        ({"type": "base64", "media_type": "image/tiff", "data": PNG}, "source.media_type"),
        ({"type": "base64", "media_type": "image/png"}, "source.data"),
        ({"type": "url", "url": "ftp://example.com/a.png"}, "source.url"),
        ({"type": "file", "file_id": "file_1"}, "source.type"),
        ({"type": "url", "url": "https://e.com/a", "extra": 1}, "source.extra"),
        ("https://e.com/a.png", "source"),
    ],
)
def test_bad_image_source(source: Any, param: str) -> None:
    refused(body(user([{"type": "image", "source": source}])), f"messages[0].content[0].{param}")


def test_pdf_document_becomes_a_file_part() -> None:
    block = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        "title": "report.pdf",
    }
    messages = chat(body(user([block, text("Summarise")])))["messages"]
    assert messages[0]["content"][0] == {
        "type": "file",
        "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
    }


def test_untitled_pdf_gets_a_file_name() -> None:
    block = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }
    part = chat(body(user([block])))["messages"][0]["content"][0]
    assert part["file"]["filename"] == "document.pdf"


def test_plain_text_document_becomes_text_with_its_title_and_context() -> None:
    block = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
        "title": "Facts",
        "context": "From an encyclopedia",
    }
    part = chat(body(user([block])))["messages"][0]["content"][0]
    assert part == {
        "type": "text",
        "text": "Facts\n\nFrom an encyclopedia\n\nThe grass is green.",
    }


@pytest.mark.parametrize(
    ("block", "param", "words"),
    [
        (
            {"type": "document", "source": {"type": "url", "url": "https://e.com/a.pdf"}},
            "messages[0].content[0].source",
            "base64 PDFs",
        ),
        (
            {"type": "document", "source": {"type": "file", "file_id": "f"}},
            "messages[0].content[0].source",
            "base64 PDFs",
        ),
        (
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "image/png", "data": PNG},
            },
            "messages[0].content[0].source",
            "base64 PDFs",
        ),
        (
            {
                "type": "document",
                "source": {"type": "content", "content": [text("x")]},
            },
            "messages[0].content[0].source",
            "content sources",
        ),
        (
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                "citations": {"enabled": True},
            },
            "messages[0].content[0].citations",
            "citations",
        ),
        (
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                "title": 3,
            },
            "messages[0].content[0].title",
            "string",
        ),
    ],
)
def test_unsupported_documents(block: dict[str, Any], param: str, words: str) -> None:
    refused(body(user([block])), param, words)


def test_tool_use_becomes_tool_calls_with_json_arguments() -> None:
    messages = chat(
        body(
            user("Weather in Paris and Rome?"),
            assistant(
                [
                    text("Checking."),
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "weather",
                        "input": {"city": "Rome"},
                    },
                ]
            ),
            user(
                [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("21C")]},
                    text("Thanks; which is warmer?"),
                ]
            ),
        )
    )["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    }
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "21C"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks; which is warmer?"}]},
    ]


def test_assistant_with_only_tool_use_has_no_content() -> None:
    messages = chat(
        body(
            user("Go"),
            assistant([{"type": "tool_use", "id": "t", "name": "run", "input": {}}]),
            user([{"type": "tool_result", "tool_use_id": "t"}]),
        )
    )["messages"]
    assert messages[1]["content"] is None
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert messages[2] == {"role": "tool", "tool_call_id": "t", "content": ""}


def test_assistant_text_blocks_stay_separate_parts() -> None:
    messages = chat(body(user("Hi"), assistant([text("One."), text("Two.")])))["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
    }


def test_tool_result_error_is_said_in_the_text() -> None:
    messages = chat(
        body(
            user("Go"),
            assistant([{"type": "tool_use", "id": "t", "name": "run", "input": {}}]),
            user(
                [{"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}]
            ),
        )
    )["messages"]
    assert messages[2] == {"role": "tool", "tool_call_id": "t", "content": "Error: boom"}
    empty = chat(
        body(
            user("Go"),
            assistant([{"type": "tool_use", "id": "t", "name": "run", "input": {}}]),
            user([{"type": "tool_result", "tool_use_id": "t", "is_error": True}]),
        )
    )["messages"]
    assert empty[2]["content"] == "Error"


def test_tool_result_images_follow_the_tool_messages() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}
    messages = chat(
        body(
            user("Screenshot"),
            assistant([{"type": "tool_use", "id": "t", "name": "shot", "input": {}}]),
            user(
                [
                    {"type": "tool_result", "tool_use_id": "t", "content": [text("done"), image]},
                    text("Describe it"),
                ]
            ),
        )
    )["messages"]
    assert messages[2] == {"role": "tool", "tool_call_id": "t", "content": "done"}
    assert messages[3] == {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
            {"type": "text", "text": "Describe it"},
        ],
    }


def test_tool_results_come_first_in_their_turn() -> None:
    messages = chat(
        body(
            user("Go"),
            assistant([{"type": "tool_use", "id": "t", "name": "run", "input": {}}]),
            user([text("Here:"), {"type": "tool_result", "tool_use_id": "t", "content": "ok"}]),
        )
    )["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "tool_result", "content": "x"}, "tool_use_id"),
        ({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}, "is_error"),
        ({"type": "tool_result", "tool_use_id": "t", "content": 3}, "content"),
        (
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "search_result"}]},
            "content[0].type",
        ),
        ({"type": "tool_result", "tool_use_id": "t", "content": ["x"]}, "content[0]"),
        ({"type": "tool_result", "tool_use_id": "t", "extra": 1}, "extra"),
    ],
)
def test_bad_tool_results(block: dict[str, Any], param: str) -> None:
    refused(body(user([block])), f"messages[0].content[0].{param}")


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "tool_use", "name": "f", "input": {}}, "id"),
        ({"type": "tool_use", "id": "t", "input": {}}, "name"),
        ({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}, "input"),
        ({"type": "tool_use", "id": "t", "name": "f", "input": {}, "x": 1}, "x"),
    ],
)
def test_bad_tool_use(block: dict[str, Any], param: str) -> None:
    refused(body(user("Hi"), assistant([block])), f"messages[1].content[0].{param}")


def test_thinking_blocks_are_dropped_for_chat_and_kept_in_the_body() -> None:
    raw = body(
        user("Think"),
        assistant(
            [
                {"type": "thinking", "thinking": "Let me see…", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                text("Answer."),
            ]
        ),
        user("More"),
    )
    request = parse(raw)
    assert request.chat_body["messages"][1] == {"role": "assistant", "content": "Answer."}
    assert request.dropped == ("messages[1].content[0]", "messages[1].content[1]")
    assert request.dropped_input_bytes == len("Let me see…".encode()) + len("opaque")
    assert request.body["messages"][1]["content"][0]["signature"] == "sig"
    assert request.native_only == {}


def test_an_assistant_turn_of_thinking_only_is_left_out() -> None:
    messages = chat(
        body(
            user("Hi"),
            assistant([{"type": "thinking", "thinking": "hm", "signature": "s"}]),
            user("Again"),
        )
    )["messages"]
    assert messages == [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}]


def test_empty_assistant_string_is_left_out() -> None:
    messages = chat(body(user("Hi"), assistant("")))["messages"]
    assert messages == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("raw", "param", "words"),
    [
        (body(messages=[]), "messages", "non-empty"),
        (body(messages="Hi"), "messages", "non-empty"),
        (body(messages=["Hi"]), "messages[0]", "object"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages[0].role", "user"),
        (body(messages=[{"role": "user"}]), "messages[0].content", "string or an array"),
        (body(messages=[{"role": "user", "content": 3}]), "messages[0].content", ""),
        (body(messages=[{"role": "user", "content": "x", "name": "n"}]), "messages[0].name", ""),
        (body(user([{"type": "text", "text": 3}])), "messages[0].content[0].text", "string"),
        (body(user(["x"])), "messages[0].content[0]", "object"),
        (
            body(user([{"type": "thinking", "thinking": "x"}])),
            "messages[0].content[0].type",
            "user turns",
        ),
        (body(user([{"type": "search_result"}])), "messages[0].content[0].type", "user turns"),
        (
            body(user([{"type": "container_upload", "file_id": "f"}])),
            "messages[0].content[0].type",
            "",
        ),
        (
            body(user("Hi"), assistant([{"type": "image", "source": {}}])),
            "messages[1].content[0].type",
            "assistant turns",
        ),
        (
            body(
                user("Hi"),
                assistant([{"type": "server_tool_use", "id": "s", "name": "web_search"}]),
            ),
            "messages[1].content[0].type",
            "assistant turns",
        ),
        (
            body(user("Hi"), assistant([{"type": "thinking", "thinking": 1, "signature": "s"}])),
            "messages[1].content[0].thinking",
            "",
        ),
        (
            body(user("Hi"), assistant([{"type": "redacted_thinking"}])),
            "messages[1].content[0].data",
            "",
        ),
        (
            body(messages=[assistant([{"type": "thinking", "thinking": "x", "signature": "s"}])]),
            "messages",
            "no content",
        ),
    ],
)
def test_bad_messages(raw: Any, param: str, words: str) -> None:
    refused(raw, param, words)


def test_null_members_count_as_absent() -> None:
    """Clients echo earlier answers' blocks with every unset field as null."""
    request = parse(
        body(
            user("Hi"),
            assistant(
                [
                    text("Sure.", citations=None),
                    {
                        "type": "tool_use",
                        "id": "t",
                        "name": "f",
                        "input": {},
                        "caller": None,
                        "toolset_name": None,
                    },
                ]
            ),
            user([{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]),
            container=None,
            mcp_servers=None,
            stream=None,
            context_management=None,
        )
    )
    assert request.stream is False
    assert request.chat_body["messages"][1]["tool_calls"][0]["id"] == "t"
    refused(
        body(
            user("Hi"),
            assistant(
                [{"type": "tool_use", "id": "t", "name": "f", "input": {}, "toolset_name": "x"}]
            ),
        ),
        "messages[1].content[0].toolset_name",
    )


def test_tool_use_called_directly_only() -> None:
    direct = {"type": "tool_use", "id": "t", "name": "f", "input": {}, "caller": {"type": "direct"}}
    parse(body(user("Hi"), assistant([direct])))
    by_code = {**direct, "caller": {"type": "code_execution_20250825", "tool_id": "srvtoolu_1"}}
    refused(body(user("Hi"), assistant([by_code])), "messages[1].content[0].caller", "server tools")


def test_citations_on_earlier_answers_are_dropped() -> None:
    request = parse(
        body(user("Hi"), assistant([text("Cited.", citations=[{"type": "char_location"}])]))
    )
    assert request.chat_body["messages"][1] == {"role": "assistant", "content": "Cited."}
    assert request.dropped == ("messages[1].content[0].citations",)


# ============================================================================ tools


def test_tools_become_function_tools() -> None:
    out = chat(
        body(
            tools=[
                {"name": "weather", "description": "Weather now", "input_schema": SCHEMA},
                {
                    "type": "custom",
                    "name": "noop",
                    "input_schema": {"type": "object"},
                    "strict": True,
                    "cache_control": {"type": "ephemeral"},
                },
            ]
        )
    )
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": SCHEMA, "description": "Weather now"},
        },
        {
            "type": "function",
            "function": {"name": "noop", "parameters": {"type": "object"}, "strict": True},
        },
    ]


def test_empty_tools_send_none() -> None:
    assert "tools" not in chat(body(tools=[]))


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "web_fetch_20250910", "name": "web_fetch"},
        {"type": "code_execution_20250825", "name": "code_execution"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "memory_20250818", "name": "memory"},
        {"type": "tool_search_tool_regex_20251119", "name": "tool_search"},
    ],
)
def test_server_and_builtin_tools_are_refused_as_priced_apart(tool: dict[str, Any]) -> None:
    error = refused(
        body(tools=[{"name": "ok", "input_schema": {"type": "object"}}, tool]), "tools[1].type"
    )
    assert "priced apart" in error.message
    assert tool["type"] in error.message


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"input_schema": SCHEMA}, "tools[0].name"),
        ({"name": "f"}, "tools[0].input_schema"),
        ({"name": "f", "input_schema": {"type": "string"}}, "tools[0].input_schema.type"),
        ({"name": "f", "input_schema": SCHEMA, "description": 3}, "tools[0].description"),
        ({"name": "f", "input_schema": SCHEMA, "strict": "yes"}, "tools[0].strict"),
        ({"name": "f", "input_schema": SCHEMA, "defer_loading": True}, "tools[0].defer_loading"),
        ("f", "tools[0]"),
    ],
)
def test_bad_tools(tool: Any, param: str) -> None:
    refused(body(tools=[tool]), param)
    refused(body(tools={"name": "f"}), "tools")


TOOLS = [{"name": "weather", "input_schema": SCHEMA}]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    out = chat(body(tools=TOOLS, tool_choice=choice))
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


@pytest.mark.parametrize("kind", ["auto", "any"])
def test_disable_parallel_tool_use(kind: str) -> None:
    out = chat(body(tools=TOOLS, tool_choice={"type": kind, "disable_parallel_tool_use": True}))
    assert out["parallel_tool_calls"] is False
    out = chat(body(tools=TOOLS, tool_choice={"type": kind, "disable_parallel_tool_use": False}))
    assert "parallel_tool_calls" not in out


def test_disable_parallel_tool_use_with_a_named_tool() -> None:
    out = chat(
        body(
            tools=TOOLS,
            tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        )
    )
    assert out["parallel_tool_calls"] is False


def test_auto_or_none_without_tools_is_dropped() -> None:
    for kind in ("auto", "none"):
        out = chat(body(tool_choice={"type": kind}))
        assert "tool_choice" not in out
        assert "parallel_tool_calls" not in out


@pytest.mark.parametrize(
    ("choice", "tools", "param"),
    [
        ({"type": "any"}, None, "tool_choice"),
        ({"type": "tool", "name": "weather"}, None, "tool_choice"),
        ({"type": "tool"}, TOOLS, "tool_choice.name"),
        ({"type": "required"}, TOOLS, "tool_choice.type"),
        ("auto", TOOLS, "tool_choice"),
        (
            {"type": "auto", "disable_parallel_tool_use": "yes"},
            TOOLS,
            "tool_choice.disable_parallel_tool_use",
        ),
        (
            {"type": "none", "disable_parallel_tool_use": True},
            TOOLS,
            "tool_choice.disable_parallel_tool_use",
        ),
        ({"type": "auto", "x": 1}, TOOLS, "tool_choice.x"),
    ],
)
def test_bad_tool_choice(choice: Any, tools: Any, param: str) -> None:
    raw = body(tool_choice=choice)
    if tools is not None:
        raw["tools"] = tools
    refused(raw, param)


# ============================================================================ parameters


def test_stop_sequences_become_stop() -> None:
    assert chat(body(stop_sequences=["\n\nHuman:", "END"]))["stop"] == ["\n\nHuman:", "END"]
    assert "stop" not in chat(body(stop_sequences=[]))


def test_more_than_four_stop_sequences_are_refused() -> None:
    refused(body(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences", "at most 4")


@pytest.mark.parametrize(
    ("value", "param"),
    [("END", "stop_sequences"), ([1], "stop_sequences"), (["ok", "  "], "stop_sequences[1]")],
)
def test_bad_stop_sequences(value: Any, param: str) -> None:
    refused(body(stop_sequences=value), param)


def test_temperature_and_top_p_pass_through() -> None:
    out = chat(body(temperature=0.3, top_p=0.9))
    assert out["temperature"] == 0.3
    assert out["top_p"] == 0.9
    assert chat(body(temperature=1))["temperature"] == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", 1.5),
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("top_p", 2),
        ("top_p", True),
    ],
)
def test_bad_sampling(name: str, value: Any) -> None:
    refused(body(**{name: value}), name)


def test_top_k_is_native_only_and_refused_for_chat() -> None:
    request = parse(body(top_k=40))
    assert "top_k" not in request.chat_body
    assert set(request.native_only) == {"top_k"}
    with pytest.raises(ValidationFailed) as info:
        request.refuse_for_chat()
    assert info.value.body["param"] == "top_k"
    assert "top_k" in info.value.message


@pytest.mark.parametrize("value", [-1, 1.5, "5", True])
def test_bad_top_k(value: Any) -> None:
    refused(body(top_k=value), "top_k")


def test_metadata_user_id_becomes_user() -> None:
    assert chat(body(metadata={"user_id": "u-42"}))["user"] == "u-42"
    assert "user" not in chat(body(metadata={"user_id": None}))
    assert "user" not in chat(body(metadata={}))
    assert "metadata" not in chat(body(metadata={"user_id": "u"}))


@pytest.mark.parametrize(
    ("value", "param"),
    [("u", "metadata"), ({"user_id": 3}, "metadata.user_id"), ({"team": "x"}, "metadata.team")],
)
def test_bad_metadata(value: Any, param: str) -> None:
    refused(body(metadata=value), param)


@pytest.mark.parametrize(("tier", "chat_tier"), [("auto", "auto"), ("standard_only", "default")])
def test_service_tier(tier: str, chat_tier: str) -> None:
    assert chat(body(service_tier=tier))["service_tier"] == chat_tier


def test_bad_service_tier() -> None:
    refused(body(service_tier="priority"), "service_tier")


@pytest.mark.parametrize(
    ("budget", "effort"),
    [
        (1024, "low"),
        (4095, "low"),
        (4096, "medium"),
        (16383, "medium"),
        (16384, "high"),
        (60000, "high"),
    ],
)
def test_thinking_budget_becomes_reasoning_effort(budget: int, effort: str) -> None:
    out = chat(body(max_tokens=64000, thinking={"type": "enabled", "budget_tokens": budget}))
    assert out["reasoning_effort"] == effort


@pytest.mark.parametrize("thinking", [{"type": "disabled"}, {"type": "adaptive"}])
def test_thinking_disabled_or_adaptive_asks_no_effort(thinking: dict[str, Any]) -> None:
    assert "reasoning_effort" not in chat(body(thinking=thinking))


@pytest.mark.parametrize(
    ("thinking", "param"),
    [
        ({"type": "enabled"}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": 1000}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": 256}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": 2048}, "thinking.budget_tokens"),  # >= max_tokens
        ({"type": "sometimes"}, "thinking.type"),
        ({"type": "disabled", "budget_tokens": 2048}, "thinking.budget_tokens"),
        ("on", "thinking"),
    ],
)
def test_bad_thinking(thinking: Any, param: str) -> None:
    refused(body(max_tokens=2048, thinking=thinking), param)


def test_output_config_effort_and_format() -> None:
    out = chat(
        body(
            output_config={"effort": "medium", "format": {"type": "json_schema", "schema": SCHEMA}}
        )
    )
    assert out["reasoning_effort"] == "medium"
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }


def test_output_config_effort_beats_the_thinking_budget() -> None:
    out = chat(
        body(
            max_tokens=9000,
            thinking={"type": "enabled", "budget_tokens": 8000},
            output_config={"effort": "high"},
        )
    )
    assert out["reasoning_effort"] == "high"


@pytest.mark.parametrize("effort", ["xhigh", "max"])
def test_output_config_efforts_beyond_chat_are_native_only(effort: str) -> None:
    request = parse(body(output_config={"effort": effort}))
    assert "reasoning_effort" not in request.chat_body
    assert set(request.native_only) == {"output_config.effort"}
    with pytest.raises(ValidationFailed) as info:
        request.refuse_for_chat()
    assert info.value.body["param"] == "output_config.effort"


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"effort": "extreme"}, "output_config.effort"),
        ({"format": {"type": "text"}}, "output_config.format.type"),
        ({"format": {"type": "json_schema"}}, "output_config.format.schema"),
        ({"format": {"type": "json_schema", "schema": SCHEMA, "x": 1}}, "output_config.format.x"),
        ({"task_budget": 3}, "output_config.task_budget"),
        ([], "output_config"),
    ],
)
def test_bad_output_config(config: Any, param: str) -> None:
    refused(body(output_config=config), param)


# ============================================================================ counting


def test_count_tokens_needs_no_max_tokens_and_takes_no_sampling() -> None:
    request = parse_count_tokens(
        {
            "model": "claude-x",
            "messages": [user("Hi")],
            "system": "Be brief.",
            "thinking": {"type": "enabled", "budget_tokens": 2000},
        },
        {},
    )
    assert request.max_tokens is None
    assert "max_completion_tokens" not in request.chat_body
    validate_chat_request(request.chat_body)
    with pytest.raises(ValidationFailed) as info:
        parse_count_tokens({"model": "m", "messages": [user("Hi")], "max_tokens": 5}, {})
    assert info.value.body["param"] == "max_tokens"


def test_count_tokens_estimate_is_the_input_bound() -> None:
    request = parse(body(user("Hello there"), system="Be brief."))
    expected = PER_REQUEST_TOKENS + 2 * PER_MESSAGE_TOKENS + len("system") + len("Be brief.")
    expected += len("user") + len("Hello there")
    assert count_tokens_estimate(request) == {"input_tokens": expected}
    assert expected == input_token_bound(request.chat_body, DEFAULT_IMAGE_BOUND)


def test_count_tokens_estimate_counts_images_tools_and_dropped_thinking() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}}
    request = parse(
        body(
            user([image]),
            assistant([{"type": "thinking", "thinking": "x" * 100, "signature": "s"}, text("ok")]),
            user("more"),
            tools=TOOLS,
        )
    )
    base = input_token_bound(request.chat_body, 1000)
    assert count_tokens_estimate(request, image_bound=1000) == {"input_tokens": base + 100}
    assert count_tokens_estimate(request, image_bound=1000)["input_tokens"] > 1000
    assert count_tokens_estimate(request, image_bound=1000, context_tokens=500) == {
        "input_tokens": 500
    }


def test_count_tokens_estimate_of_a_pdf_needs_the_context_window() -> None:
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }
    request = parse(body(user([pdf])))
    with pytest.raises(ValidationFailed) as info:
        count_tokens_estimate(request)
    assert info.value.body["param"] == "messages[0].content[0]"
    assert count_tokens_estimate(request, context_tokens=200_000)["input_tokens"] == 200_000


# ============================================================================ a whole body


def test_a_claude_code_like_body_translates_and_validates() -> None:
    raw = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            text("You are Claude Code."),
            text("Project notes.", cache_control={"type": "ephemeral"}),
        ],
        "metadata": {"user_id": "user_abc_session_1"},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "tools": [
            {"name": "Read", "description": "Read a file", "input_schema": SCHEMA},
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}},
        ],
        "messages": [
            user([text("Fix the bug", cache_control={"type": "ephemeral"})]),
            assistant(
                [
                    {"type": "thinking", "thinking": "Read first.", "signature": "abc"},
                    {"type": "tool_use", "id": "toolu_a", "name": "Read", "input": {"city": "x"}},
                ]
            ),
            user([{"type": "tool_result", "tool_use_id": "toolu_a", "content": "contents"}]),
        ],
    }
    request = parse(raw, {"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert request.chat_body["reasoning_effort"] == "high"
    assert request.chat_body["user"] == "user_abc_session_1"
    assert [m["role"] for m in request.chat_body["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
    ]
    assert request.anthropic_beta == ("interleaved-thinking-2025-05-14",)
    assert request.dropped == (
        "system[1].cache_control",
        "messages[0].content[0].cache_control",
        "messages[1].content[0]",
    )
    request.refuse_for_chat()
