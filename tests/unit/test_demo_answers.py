"""The demo provider's answers (gateway.providers.demo.answers) and their OpenAI shapes
(gateway.providers.demo): tools, response_format, n, stop, the output ceiling, and
usage that counts exactly what was streamed."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from gateway.config import ProviderConfig
from gateway.config import Timeouts as ConfigTimeouts
from gateway.errors import ValidationFailed
from gateway.providers.base import StreamEvent, UpstreamRequest
from gateway.providers.demo import DemoProvider
from gateway.providers.demo.answers import answer, cut_at_stop, prompt_tokens, tokens
from gateway.usage import Usage

QUESTION = "What is the capital of the UK?"
REPLY = (
    "Hello from the karta demo provider. This answer is generated offline, word by word, "
    "so you can watch streaming, usage accounting and budgets work without a provider key. "
    "You said: " + QUESTION
)
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather somewhere",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "hourly": {"type": "boolean"},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer", "minimum": 1900},
        "genres": {"type": "array", "items": {"enum": ["drama", "comedy"]}, "minItems": 1},
        "rating": {"type": "number", "minimum": 0, "maximum": 10},
        "director": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
    },
    "required": ["title", "year", "genres", "rating", "director"],
}


def body(**extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": QUESTION}], **extra}


# --------------------------------------------------------------------------- text


def test_plain_answer_is_unchanged() -> None:
    (choice,) = answer(body())
    assert choice.text == REPLY
    assert choice.finish_reason == "stop"
    assert choice.tool is None
    assert choice.completion_tokens == len(REPLY.split())


def test_tokens_join_back_to_the_text() -> None:
    for text in ("", "  lead and trail  ", '{"a": "b c", "d": [1, 2]}', REPLY):
        assert "".join(tokens(text)) == text
    assert tokens("one two  three") == ["one ", "two  ", "three"]


@pytest.mark.parametrize("name", ["max_completion_tokens", "max_tokens"])
def test_the_ceiling_cuts_with_finish_length(name: str) -> None:
    (choice,) = answer(body(**{name: 5}))
    assert choice.pieces == ("Hello ", "from ", "the ", "karta ", "demo ")
    assert (choice.finish_reason, choice.completion_tokens) == ("length", 5)


def test_stop_cuts_before_the_earliest_stop_string() -> None:
    # "budgets" comes later in the text than "word": the earliest occurrence wins,
    # whatever its place in the list.
    (choice,) = answer(body(stop=["budgets", "word", ""]))
    assert choice.text == "Hello from the karta demo provider. This answer is generated offline, "
    assert choice.finish_reason == "stop"
    assert choice.completion_tokens == len(tokens(choice.text))
    (single,) = answer(body(stop="demo provider"))
    assert single.text == "Hello from the karta "
    assert cut_at_stop("abc", ["x"]) == "abc"
    assert cut_at_stop("abc", ["b", "a"]) == ""


def test_a_stop_past_the_ceiling_still_ends_with_length() -> None:
    (choice,) = answer(body(stop=["You said"], max_completion_tokens=3))
    assert (choice.text, choice.finish_reason) == ("Hello from the ", "length")


def test_n_choices_each_within_the_per_choice_ceiling() -> None:
    choices = answer(body(n=3, max_completion_tokens=10))
    assert [c.index for c in choices] == [0, 1, 2]
    assert len({c.text for c in choices}) == 3  # distinguishable answers
    for c in choices:
        assert c.completion_tokens == 10
        assert c.finish_reason == "length"
    assert choices[1].text == "Hello from the karta demo provider (choice 2 of 3). "
    uncapped = answer(body(n=2))
    assert {c.finish_reason for c in uncapped} == {"stop"}


# --------------------------------------------------------------------------- response_format


def test_json_object_answer_is_json() -> None:
    (choice,) = answer(body(response_format={"type": "json_object"}))
    assert json.loads(choice.text) == {"answer": REPLY}
    assert choice.completion_tokens == len(tokens(choice.text))


def test_json_schema_answer_validates_for_every_choice() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "movie", "schema": SCHEMA}}
    choices = answer(body(response_format=fmt, n=2))
    for choice in choices:
        jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(choice.text))
        assert choice.finish_reason == "stop"
    assert choices[0].text != choices[1].text


def test_json_schema_without_a_schema_is_json_object() -> None:
    (choice,) = answer(body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}))
    assert json.loads(choice.text) == {"answer": REPLY}


def test_a_schema_that_is_not_one_is_refused() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}
    with pytest.raises(ValidationFailed) as caught:
        answer(body(response_format=fmt))
    assert caught.value.body["param"] == "response_format.json_schema.schema"


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("tool_choice", [None, "auto", "required"])
def test_tools_answer_with_a_call_to_the_first_tool(tool_choice: str | None) -> None:
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    (choice,) = answer(body(tools=[WEATHER, TIME], **extra))
    assert choice.tool is not None
    assert choice.tool.name == "get_weather"
    assert choice.finish_reason == "tool_calls"
    arguments = json.loads(choice.text)
    jsonschema.Draft202012Validator(WEATHER["function"]["parameters"]).validate(arguments)
    assert arguments == {"city": "demo", "unit": "celsius", "days": 1}
    # The name (the call's first delta) and each argument fragment are a token each.
    assert choice.completion_tokens == 1 + len(tokens(choice.text))


def test_tool_choice_names_the_function() -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    (choice,) = answer(body(tools=[WEATHER, TIME], tool_choice=named))
    assert choice.tool is not None
    assert choice.tool.name == "get_time"
    assert json.loads(choice.text) == {"zone": "demo"}
    unknown = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(ValidationFailed):
        answer(body(tools=[WEATHER], tool_choice=unknown))


def test_tool_choice_none_and_no_function_tools_answer_text() -> None:
    (choice,) = answer(body(tools=[WEATHER], tool_choice="none"))
    assert (choice.tool, choice.text) == (None, REPLY)
    (other,) = answer(body(tools=[{"type": "custom", "custom": {"name": "x"}}]))
    assert other.tool is None


def test_after_a_tool_result_the_answer_is_text_unless_a_call_is_forced() -> None:
    messages = [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_demo_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_demo_0", "content": "Sunny, 21 C"},
    ]
    (choice,) = answer({"messages": messages, "tools": [WEATHER]})
    assert choice.tool is None
    assert choice.text == "The karta demo provider got the tool result: Sunny, 21 C"
    (forced,) = answer({"messages": messages, "tools": [WEATHER], "tool_choice": "required"})
    assert forced.tool is not None


def test_a_tool_call_honours_the_ceiling_and_n() -> None:
    choices = answer(body(tools=[WEATHER], max_completion_tokens=3, n=2))
    for i, choice in enumerate(choices):
        assert choice.tool is not None
        assert choice.tool.id == f"call_demo_{i}"
        assert choice.completion_tokens == 3
        assert choice.finish_reason == "length"
    (tiny,) = answer(body(tools=[WEATHER], max_completion_tokens=1))
    assert (tiny.text, tiny.completion_tokens, tiny.finish_reason) == ("", 1, "length")


def test_parameters_that_are_not_a_schema_are_refused() -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": ["x"]}}
    with pytest.raises(ValidationFailed):
        answer(body(tools=[bad]))
    (choice,) = answer(body(tools=[{"type": "function", "function": {"name": "f"}}]))
    assert json.loads(choice.text) == {}


# --------------------------------------------------------------------------- prompt


def test_prompt_counts_what_the_model_reads() -> None:
    plain = prompt_tokens(body())
    assert plain == 3 + 4 + (len(QUESTION) + 3) // 4
    assert prompt_tokens(body(tools=[WEATHER])) == plain + (len(json.dumps([WEATHER])) + 3) // 4
    fmt = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    assert prompt_tokens(body(response_format=fmt)) > plain


# --------------------------------------------------------------------------- OpenAI shapes


def _provider() -> DemoProvider:
    return DemoProvider("demo", ProviderConfig(kind="demo", chunk_delay_ms=0))


def _request(payload: dict[str, Any]) -> UpstreamRequest:
    return UpstreamRequest(body=payload, api_key="", timeouts=ConfigTimeouts(), request_id="r1")


async def _chunks(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], Usage]:
    """The stream's chunks, and its usage: one Usage event, the last."""
    stream = await _provider().open_stream(_request(payload))
    out: list[StreamEvent] = []
    async for batch in stream:
        assert batch
        out.extend(batch)
    await stream.aclose()
    *chunks, usage = out
    assert isinstance(usage, Usage)
    assert all(isinstance(c, dict) for c in chunks)
    return [c for c in chunks if isinstance(c, dict)], usage


def _generated(delta: dict[str, Any]) -> bool:
    """A delta the model generated (a token): content or a tool call, not the role."""
    return bool(delta.get("content") or delta.get("tool_calls"))


async def test_stream_of_a_tool_call_as_openai_streams_it() -> None:
    payload = body(tools=[WEATHER])
    chunks, usage = await _chunks(payload)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    head = deltas[0]["tool_calls"][0]
    assert deltas[0]["role"] == "assistant"
    assert head["id"] == "call_demo_0"
    assert head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [d["tool_calls"][0] for d in deltas[1:] if d]
    assert all(set(f) == {"index", "function"} for f in fragments)
    assert all(set(f["function"]) == {"arguments"} for f in fragments)
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    unary, unary_usage = await _provider().complete(_request(payload))
    message = unary["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["arguments"] == arguments
    assert message["content"] is None
    assert unary["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert all(c["choices"] for c in chunks)  # the usage came as its own event, last
    assert usage.output_tokens == sum(_generated(d) for d in deltas)
    assert usage == unary_usage


async def test_stream_of_n_choices_with_stop_counts_every_piece() -> None:
    payload = body(n=2, stop=["budgets"], max_completion_tokens=100)
    chunks, usage = await _chunks(payload)
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    generated = 0
    for chunk in chunks:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content") or ""
        generated += _generated(choice["delta"])
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert finishes == {0: "stop", 1: "stop"}
    assert texts[1].startswith("Hello from the karta demo provider (choice 2 of 2).")
    assert all("budgets" not in t and t.endswith("usage accounting and ") for t in texts.values())
    unary, _ = await _provider().complete(_request(payload))
    assert [c["message"]["content"] for c in unary["choices"]] == [texts[0], texts[1]]
    assert usage.output_tokens == generated == len(tokens(texts[0]) + tokens(texts[1]))


def test_a_schema_without_a_finite_value_is_refused_naming_it() -> None:
    endless = {
        "$defs": {
            "A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"]}
        },
        "$ref": "#/$defs/A",
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": endless}}
    with pytest.raises(ValidationFailed) as caught:
        answer(body(response_format=fmt))
    assert caught.value.body["param"] == "response_format.json_schema.schema"
    tool = {"type": "function", "function": {"name": "f", "parameters": endless}}
    with pytest.raises(ValidationFailed) as caught:
        answer(body(tools=[tool]))
    assert caught.value.body["param"] == "tools.function.parameters"
