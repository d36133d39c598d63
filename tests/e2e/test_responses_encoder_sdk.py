"""End to end: the official OpenAI SDK's Responses client against the Responses encoder.

A tiny aiohttp server on 127.0.0.1 (pytest-aiohttp) answers ``POST /v1/responses``
the way the gateway's route will: parse_request (or continue_from, for a
previous_response_id), then a scripted chat answer through unary_response or
ResponsesStream, storing stored_turns for the next turn. The SDK (openai.AsyncOpenAI)
talks to it over TCP as an application would: create, stream + get_final_response,
parse with a pydantic text_format, function calls, usage, failures and refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel

from gateway.errors import NotFound, ValidationFailed
from gateway.sse import SSEParser
from gateway.surfaces.responses import (
    ResponsesStream,
    continue_from,
    new_response_id,
    parse_request,
    stored_turns,
    unary_response,
)
from gateway.usage import Usage

DATA = Path(__file__).resolve().parent.parent / "data"
USAGE = Usage(
    input_tokens=78,
    output_tokens=9,
    cached_input_tokens=5,
    reasoning_tokens=2,
    cache_creation_input_tokens=1,
)


@dataclass
class Script:
    """What the server answers, and what it saw."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    completion: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=lambda: USAGE)
    fail: tuple[str, str] | None = None  # fail(code, message) after the chunks
    slice_size: int | None = None  # write the SSE bytes in slices of this size
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    stored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


SCRIPT: web.AppKey[Script] = web.AppKey("script", Script)


async def write(out: web.StreamResponse, data: bytes, size: int | None) -> None:
    step = size or max(len(data), 1)
    for i in range(0, len(data), step):
        await out.write(data[i : i + step])


async def responses(request: web.Request) -> web.StreamResponse:
    script = request.app[SCRIPT]
    try:
        parsed = parse_request(await request.json())
        previous: list[dict[str, Any]] = []
        if parsed.previous_response_id is not None:
            if parsed.previous_response_id not in script.stored:
                raise NotFound.detail("no stored response with that id")
            previous = script.stored[parsed.previous_response_id]
            chat = continue_from(previous, parsed)
        else:
            chat = parsed.chat
    except (ValidationFailed, NotFound) as exc:
        return exc.response("openai")
    script.chat_bodies.append(chat)
    response_id = new_response_id()
    model = parsed.model or "default"
    if not parsed.stream:
        response = unary_response(script.completion, script.usage, response_id, model, parsed)
        if parsed.store:
            script.stored[response_id] = stored_turns(parsed, response, previous)
        return web.json_response(response)
    stream = ResponsesStream(response_id, model, parsed)
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    await write(out, stream.start(), script.slice_size)
    for chunk in script.chunks:
        await write(out, stream.feed(chunk), script.slice_size)
    end = stream.fail(*script.fail) if script.fail else stream.finish(script.usage)
    await write(out, end, script.slice_size)
    assert stream.response is not None
    if parsed.store and script.fail is None:
        script.stored[response_id] = stored_turns(parsed, stream.response, previous)
    await out.write_eof()
    return out


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def client(aiohttp_server: Any, script: Script) -> AsyncIterator[openai.AsyncOpenAI]:
    app = web.Application()
    app[SCRIPT] = script
    app.router.add_post("/v1/responses", responses)
    server = await aiohttp_server(app)
    sdk = openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="sk-test", max_retries=0, timeout=15
    )
    yield sdk
    await sdk.close()


def recorded(name: str) -> list[dict[str, Any]]:
    parser = SSEParser()
    events = parser.feed((DATA / name).read_bytes()) + parser.close()
    return [orjson.loads(e.data) for e in events if e.data != b"[DONE]" and e.event != "error"]


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_782_955_817,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
    }


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return chunks


def assert_usage(usage: Any, expected: Usage = USAGE) -> None:
    """The usage the SDK reads is the Usage given to the encoder."""
    assert usage is not None
    assert usage.input_tokens == expected.input_tokens
    assert usage.input_tokens_details.cached_tokens == expected.cached_input_tokens
    assert usage.input_tokens_details.cache_write_tokens == expected.cache_creation_input_tokens
    assert usage.output_tokens == expected.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == expected.reasoning_tokens
    assert usage.total_tokens == expected.total_tokens


class Capital(BaseModel):
    city: str
    country: str


class GetCapital(BaseModel):
    country: str


# --------------------------------------------------------------------------- unary


async def test_create(client: openai.AsyncOpenAI, script: Script) -> None:
    script.completion = completion({"content": "The capital of the UK is London."})
    response = await client.responses.create(
        model="fast", input="What is the capital of the UK?", instructions="Be terse."
    )
    assert response.output_text == "The capital of the UK is London."
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "fast"
    assert response.instructions == "Be terse."
    assert response.output[0].type == "message"
    assert_usage(response.usage)
    assert script.chat_bodies == [
        {
            "model": "fast",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "What is the capital of the UK?"},
            ],
        }
    ]


async def test_create_with_function_calls(client: openai.AsyncOpenAI, script: Script) -> None:
    script.completion = completion(
        {
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_capital", "arguments": '{"country":"UK"}'},
                }
            ],
        },
        "tool_calls",
    )
    tool: FunctionToolParam = {
        "type": "function",
        "name": "get_capital",
        "description": "The capital of a country",
        "parameters": GetCapital.model_json_schema(),
        "strict": None,  # null: absent
    }
    response = await client.responses.create(
        model="fast",
        input="Capital of the UK?",
        tools=[tool],
        tool_choice="required",
    )
    call = response.output[0]
    assert call.type == "function_call"
    assert call.call_id == "call_1"
    assert call.name == "get_capital"
    assert call.arguments == '{"country":"UK"}'
    assert response.tool_choice == "required"
    assert response.tools[0].type == "function"
    chat = script.chat_bodies[0]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_capital",
                "description": "The capital of a country",
                "parameters": GetCapital.model_json_schema(),
            },
        }
    ]
    assert chat["tool_choice"] == "required"

    # The next turn sends the call and its output back: the chat body pairs them.
    script.completion = completion({"content": "London."})
    follow = await client.responses.create(
        model="fast",
        input=[
            {"role": "user", "content": "Capital of the UK?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_capital",
                "arguments": '{"country":"UK"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "London"},
        ],
        tools=[tool],
    )
    assert follow.output_text == "London."
    assert [m["role"] for m in script.chat_bodies[1]["messages"]] == ["user", "assistant", "tool"]


async def test_parse_with_text_format(client: openai.AsyncOpenAI, script: Script) -> None:
    script.completion = completion({"content": '{"city":"London","country":"UK"}'})
    response = await client.responses.parse(
        model="fast", input="Capital of the UK?", text_format=Capital
    )
    assert response.output_parsed == Capital(city="London", country="UK")
    fmt = script.chat_bodies[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Capital"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["city", "country"]
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"


async def test_parse_with_a_pydantic_function_tool(
    client: openai.AsyncOpenAI, script: Script
) -> None:
    script.completion = completion(
        {
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "GetCapital", "arguments": '{"country":"France"}'},
                }
            ]
        },
        "tool_calls",
    )
    response = await client.responses.parse(
        model="fast",
        input="Capital of France?",
        tools=[openai.pydantic_function_tool(GetCapital)],
    )
    call = response.output[0]
    assert call.type == "function_call"
    assert call.parsed_arguments == GetCapital(country="France")
    assert script.chat_bodies[0]["tools"][0]["function"]["strict"] is True


async def test_incomplete_unary(client: openai.AsyncOpenAI, script: Script) -> None:
    script.completion = completion({"content": "The capital"}, "length")
    response = await client.responses.create(model="fast", input="x", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 2
    assert script.chat_bodies[0]["max_completion_tokens"] == 2


async def test_previous_response_id(client: openai.AsyncOpenAI, script: Script) -> None:
    script.completion = completion({"content": "Hello Ada."})
    first = await client.responses.create(model="fast", input="My name is Ada.", instructions="A")
    script.completion = completion({"content": "Ada."})
    second = await client.responses.create(
        model="fast", input="What is my name?", previous_response_id=first.id, instructions="B"
    )
    assert second.previous_response_id == first.id
    assert script.chat_bodies[1]["messages"] == [
        {"role": "system", "content": "B"},  # this turn's instructions only
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    # A third turn carries both earlier ones.
    script.completion = completion({"content": "Yes."})
    await client.responses.create(model="fast", input="Sure?", previous_response_id=second.id)
    assert [m["content"] for m in script.chat_bodies[2]["messages"]] == [
        "My name is Ada.",
        "Hello Ada.",
        "What is my name?",
        "Ada.",
        "Sure?",
    ]
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="fast", input="x", previous_response_id="resp_nope")


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("slice_size", [None, 7], ids=["per-event", "7-byte-writes"])
async def test_stream_recorded_text(
    client: openai.AsyncOpenAI, script: Script, slice_size: int | None
) -> None:
    script.chunks = recorded("openai_chat_text_include_usage.sse")
    script.slice_size = slice_size
    kinds: list[str] = []
    snapshots: list[str] = []
    async with client.responses.stream(model="fast", input="Capital of the UK?") as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                snapshots.append(event.snapshot)
        final = await stream.get_final_response()
    assert final.output_text == "The capital of the UK is London."
    assert snapshots[-1] == "The capital of the UK is London."
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.output_text.done" in kinds
    assert final.status == "completed"
    assert final.model == "fast"
    assert_usage(final.usage)
    assert script.chat_bodies[0]["stream"] is True
    assert script.chat_bodies[0]["stream_options"] == {"include_usage": True}


async def test_create_stream_true_raw_events(client: openai.AsyncOpenAI, script: Script) -> None:
    script.chunks = text_chunks("Hel", "lo")
    stream = await client.responses.create(model="fast", input="Hi", stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [type(e).__name__ for e in events] == [
        "ResponseCreatedEvent",
        "ResponseInProgressEvent",
        "ResponseOutputItemAddedEvent",
        "ResponseContentPartAddedEvent",
        "ResponseTextDeltaEvent",
        "ResponseTextDeltaEvent",
        "ResponseTextDoneEvent",
        "ResponseContentPartDoneEvent",
        "ResponseOutputItemDoneEvent",
        "ResponseCompletedEvent",
    ]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Hello"
    assert_usage(completed.response.usage)


async def test_stream_recorded_tool_call(client: openai.AsyncOpenAI, script: Script) -> None:
    script.chunks = recorded("openai_chat_tool_call_include_usage.sse")
    arguments: list[str] = []
    async with client.responses.stream(
        model="fast",
        input="Capital of the UK?",
        tools=[openai.pydantic_function_tool(GetCapital, name="get_capital")],
    ) as stream:
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments.append(event.snapshot)
        final = await stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call"
    assert call.call_id == "call_ZR5UUuTt3pf61kjwAJIYdVMj"
    assert call.name == "get_capital"
    assert call.arguments == '{"country":"UK"}'
    assert call.parsed_arguments == GetCapital(country="UK")
    assert arguments[-1] == '{"country":"UK"}'
    assert_usage(final.usage)


async def test_stream_recorded_parallel_tool_calls(
    client: openai.AsyncOpenAI, script: Script
) -> None:
    script.chunks = recorded("openai_chat_parallel_tool_calls_include_usage.sse")
    async with client.responses.stream(model="fast", input="x") as stream:
        final = await stream.get_final_response()
    output: list[Any] = final.output  # a union of every item type: read the calls' fields
    assert [(o.type, o.name, o.arguments) for o in output] == [
        ("function_call", "get_country", "{}"),
        ("function_call", "get_product_name", "{}"),
    ]


async def test_stream_recorded_reasoning(client: openai.AsyncOpenAI, script: Script) -> None:
    script.chunks = recorded("deepseek_chat_reasoning_stream.sse")
    script.usage = Usage(input_tokens=6, output_tokens=212, reasoning_tokens=198)
    async with client.responses.stream(model="fast", input="Hello") as stream:
        final = await stream.get_final_response()
    reasoning, message = final.output
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None
    assert reasoning.content[0].text.startswith('Hmm, the user just said "Hello".')
    assert message.type == "message"
    assert final.output_text.endswith("How can I help you today?")
    assert_usage(final.usage, script.usage)


async def test_stream_parse_with_text_format(client: openai.AsyncOpenAI, script: Script) -> None:
    script.chunks = text_chunks('{"city":"Lon', 'don","country":"UK"}')
    async with client.responses.stream(
        model="fast", input="Capital of the UK?", text_format=Capital
    ) as stream:
        parsed_done = [e.parsed async for e in stream if e.type == "response.output_text.done"]
        final = await stream.get_final_response()
    assert parsed_done == [Capital(city="London", country="UK")]
    assert final.output_parsed == Capital(city="London", country="UK")


async def test_stream_incomplete(client: openai.AsyncOpenAI, script: Script) -> None:
    """finish_reason length ends in response.incomplete, as OpenAI's streams do (the
    SDK's get_final_response waits for response.completed and raises there too)."""
    script.chunks = text_chunks("The", " capital", finish="length")
    async with client.responses.stream(model="fast", input="x", max_output_tokens=2) as stream:
        events = [event async for event in stream]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            await stream.get_final_response()
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "The capital"
    assert_usage(last.response.usage)


async def test_stream_failure(client: openai.AsyncOpenAI, script: Script) -> None:
    script.chunks = text_chunks("Partial")[:1]
    script.fail = ("upstream_failed", "the provider failed mid-stream")
    async with client.responses.stream(model="fast", input="x") as stream:
        events = [event async for event in stream]
        with pytest.raises(RuntimeError):
            await stream.get_final_response()
    failed, error = events[-2:]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.message == "the provider failed mid-stream"
    assert failed.response.output_text == "Partial"
    assert error.type == "error"
    assert error.code == "upstream_failed"
    assert error.message == "the provider failed mid-stream"


# --------------------------------------------------------------------------- refusals


async def test_hosted_tool_is_a_422_naming_it(client: openai.AsyncOpenAI, script: Script) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await client.responses.create(
            model="fast", input="Search the web", tools=[{"type": "web_search"}]
        )
    assert info.value.status_code == 422
    assert info.value.param == "tools[0].type"
    assert "priced by the provider apart from tokens" in info.value.message
    assert script.chat_bodies == []


async def test_background_is_a_422(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await client.responses.create(model="fast", input="x", background=True)
    assert info.value.param == "background"


async def test_unknown_field_is_a_422(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await client.responses.create(model="fast", input="x", extra_body={"n_predict": 99})
    assert info.value.param == "n_predict"


async def test_image_file_id_is_a_422(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await client.responses.create(
            model="fast",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "file_id": "file-abc", "detail": "auto"},
                    ],
                }
            ],
        )
    assert info.value.param == "input[0].content[1].file_id"
