"""Unit tests for gateway.surfaces.responses: chat.completion -> Responses ``response``
object (validated against the official SDK's Response model), and the chat messages
stored for a later previous_response_id."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from gateway.surfaces.responses import (
    ResponsesStream,
    continue_from,
    new_response_id,
    parse_request,
    stored_turns,
    unary_response,
    usage_object,
)
from gateway.usage import Usage
from gateway.validation import validate_chat_request

USAGE = Usage(
    input_tokens=53,
    output_tokens=15,
    cached_input_tokens=10,
    reasoning_tokens=4,
    cache_creation_input_tokens=3,
)


def completion(message: dict[str, Any], finish: str | None = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_782_955_817,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 53, "completion_tokens": 15, "total_tokens": 68},
    }


def respond(message: dict[str, Any], finish: str | None = "stop", **body: Any) -> dict[str, Any]:
    body.setdefault("input", "Hi")
    request = parse_request({"model": "fast", **body})
    response = unary_response(completion(message, finish), USAGE, "resp_1", "fast", request)
    Response.model_validate(response)  # the SDK's model, validated: shapes exact
    return response


def test_text_answer() -> None:
    response = respond({"content": "Hello there"})
    assert response["id"] == "resp_1"
    assert response["object"] == "response"
    assert response["status"] == "completed"
    assert response["model"] == "fast"
    assert response["created_at"] == 1_782_955_817
    assert isinstance(response["completed_at"], int)
    [message] = response["output"]
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["status"] == "completed"
    assert message["id"].startswith("msg_")
    assert message["content"] == [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "Hello there"}
    ]
    assert Response.model_validate(response).output_text == "Hello there"


def test_usage() -> None:
    assert respond({"content": "x"})["usage"] == {
        "input_tokens": 53,
        "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 3},
        "output_tokens": 15,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 68,
    }
    assert usage_object(Usage()) == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


def test_tool_calls_are_function_call_items() -> None:
    response = respond(
        {
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
                    "function": {"name": "now", "arguments": "{}"},
                },
            ],
        },
        "tool_calls",
        tools=[{"type": "function", "name": "weather"}, {"type": "function", "name": "now"}],
    )
    assert response["status"] == "completed"
    calls = response["output"]
    assert [(c["type"], c["call_id"], c["name"], c["arguments"], c["status"]) for c in calls] == [
        ("function_call", "call_1", "weather", '{"city":"Paris"}', "completed"),
        ("function_call", "call_2", "now", "{}", "completed"),
    ]
    assert all(c["id"].startswith("fc_") for c in calls)
    assert response["tools"][0]["name"] == "weather"


def test_text_and_tool_call() -> None:
    response = respond(
        {
            "content": "Checking.",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        "tool_calls",
    )
    assert [o["type"] for o in response["output"]] == ["message", "function_call"]


def test_reasoning_content_is_a_reasoning_item_first() -> None:
    response = respond({"content": "Hi!", "reasoning_content": "The user greets."})
    reasoning, message = response["output"]
    assert reasoning == {
        "id": reasoning["id"],
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "The user greets."}],
        "status": "completed",
    }
    assert reasoning["id"].startswith("rs_")
    assert message["content"][0]["text"] == "Hi!"
    assert respond({"content": "x", "reasoning": "r"})["output"][0]["type"] == "reasoning"


def test_refusal() -> None:
    response = respond({"content": None, "refusal": "I can't help with that."})
    assert response["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]
    assert Response.model_validate(response).output_text == ""


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_cut_answers_are_incomplete(finish: str, reason: str) -> None:
    response = respond({"content": "One two"}, finish, max_output_tokens=2)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": reason}
    assert response["output"][0]["status"] == "incomplete"
    assert response["completed_at"] is None


def test_empty_answer_has_no_items() -> None:
    response = respond({"content": ""})
    assert response["output"] == []
    assert respond({"content": None}, None)["status"] == "completed"


def test_odd_completions_do_not_break() -> None:
    request = parse_request({"input": "x"})
    odds: list[dict[str, Any]] = [
        {},
        {"choices": []},
        {"choices": [None]},
        {"choices": [{"message": "x"}]},
    ]
    for odd in odds:
        response = unary_response(odd, USAGE, "resp_1", "m", request, created_at=5)
        assert response["output"] == []
        assert response["created_at"] == 5
        Response.model_validate(response)
    call = {"choices": [{"message": {"tool_calls": [None, {"function": None}]}}]}
    [item] = unary_response(call, USAGE, "r", "m", request)["output"]
    assert item["call_id"].startswith("call_")
    assert (item["name"], item["arguments"]) == ("", "")


def test_echo_defaults() -> None:
    response = respond({"content": "x"})
    assert response["instructions"] is None
    assert response["tools"] == []
    assert response["tool_choice"] == "auto"
    assert response["text"] == {"format": {"type": "text"}}
    assert response["parallel_tool_calls"] is True
    assert response["store"] is True
    assert response["metadata"] == {}
    assert response["previous_response_id"] is None
    assert response["truncation"] == "disabled"
    assert response["background"] is False
    assert response["error"] is None
    assert response["incomplete_details"] is None


def test_echo_of_a_json_schema_request() -> None:
    fmt = {"type": "json_schema", "name": "capital", "schema": {"type": "object"}, "strict": True}
    response = respond(
        {"content": "{}"},
        text={"format": fmt},
        instructions="Be terse.",
        temperature=0.1,
        top_p=0.5,
        max_output_tokens=50,
        store=False,
        metadata={"a": "b"},
        previous_response_id="resp_0",
    )
    assert response["text"] == {"format": fmt}
    assert response["instructions"] == "Be terse."
    assert (response["temperature"], response["top_p"]) == (0.1, 0.5)
    assert response["max_output_tokens"] == 50
    assert response["store"] is False
    assert response["metadata"] == {"a": "b"}
    assert response["previous_response_id"] == "resp_0"


def test_new_response_id() -> None:
    first, second = new_response_id(), new_response_id()
    assert first.startswith("resp_")
    assert first != second


# --------------------------------------------------------------------------- stored turns


def test_stored_turns_are_the_input_and_the_answer() -> None:
    request = parse_request({"input": "My name is Ada.", "instructions": "Be terse."})
    response = unary_response(completion({"content": "Hello Ada."}), USAGE, "r", "m", request)
    turns = stored_turns(request, response)
    assert turns == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
    ]
    follow = parse_request({"input": "My name?", "previous_response_id": "r"})
    chat = continue_from(turns, follow)
    assert chat["messages"][-1] == {"role": "user", "content": "My name?"}
    assert len(chat["messages"]) == 3
    validate_chat_request(chat)
    later = stored_turns(follow, response, previous=turns)
    assert later[:3] == [*turns, {"role": "user", "content": "My name?"}]


def test_stored_tool_calls_continue_with_their_outputs() -> None:
    request = parse_request(
        {"input": "Weather?", "tools": [{"type": "function", "name": "weather"}]}
    )
    answer = {
        "content": None,
        "reasoning_content": "call the tool",
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    }
    response = unary_response(completion(answer, "tool_calls"), USAGE, "r", "m", request)
    turns = stored_turns(request, response)
    assert turns[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    }
    follow = parse_request(
        {
            "input": [{"type": "function_call_output", "call_id": "call_9", "output": "sunny"}],
            "previous_response_id": "r",
            "tools": [{"type": "function", "name": "weather"}],
        }
    )
    chat = continue_from(turns, follow)
    validate_chat_request(chat)
    assert chat["messages"][-1] == {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}


def test_stored_turns_from_a_stream() -> None:
    request = parse_request({"input": "Hi", "stream": True})
    stream = ResponsesStream("resp_s", "m", request)
    stream.feed({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    stream.feed({"choices": [{"index": 0, "delta": {"refusal": "No."}, "finish_reason": "stop"}]})
    stream.finish(USAGE)
    assert stream.response is not None
    assert stored_turns(request, stream.response)[-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hel"}, {"type": "refusal", "refusal": "No."}],
    }


def test_stored_empty_answer_is_an_empty_assistant_turn() -> None:
    request = parse_request({"input": "Hi"})
    response = unary_response(completion({"content": ""}), USAGE, "r", "m", request)
    assert stored_turns(request, response)[-1] == {"role": "assistant", "content": ""}
