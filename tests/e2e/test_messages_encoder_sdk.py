"""End to end: the official ``anthropic`` SDK against a tiny aiohttp server on 127.0.0.1
whose ``POST /v1/messages`` parses the SDK's body with the Messages surface
(``parse_request``) and answers with its encoders' output for scripted chat answers:
``MessagesStream`` for streams, ``unary_message`` otherwise, ``error_body`` for
failures. What the SDK rebuilds (text, tool_use inputs, thinking, stop reasons, usage)
must be what the chat answer and the ``Usage`` given to ``finish()`` said."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web
from anthropic.types import ToolParam

from gateway.errors import GatewayError
from gateway.surfaces.messages import (
    MessagesRequest,
    MessagesStream,
    count_tokens_estimate,
    error_body,
    parse_count_tokens,
    parse_request,
    unary_message,
)
from gateway.usage import Usage
from tests.support.upstream import choice, chunk

USAGE = Usage(
    input_tokens=1200,
    output_tokens=87,
    cached_input_tokens=700,
    cache_creation_input_tokens=400,
    reasoning_tokens=30,
)
MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "The weather now",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@dataclass
class Script:
    """What the server answers next: a chat answer (stream chunks or a completion) and
    its usage, or an error (status, message, code) before or during the stream."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    completion: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=lambda: USAGE)
    error: tuple[int, str, str] | None = None
    fail_after: int | None = None  # chunks sent before a mid-stream error event
    fail: tuple[str, str] = ("upstream_error", "the provider stream ended early")


class Server:
    """``POST /v1/messages`` and ``/v1/messages/count_tokens`` over the surface."""

    def __init__(self) -> None:
        self.script = Script()
        self.requests: list[MessagesRequest] = []
        self.headers: list[dict[str, str]] = []  # each request's, names lowered
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def error(status: int, message: str, code: str) -> web.Response:
        return web.json_response(error_body(status, message, code), status=status)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        try:
            parsed = parse_request(orjson.loads(await request.read()), request.headers)
        except GatewayError as exc:
            return self.error(exc.status, exc.message, exc.code)
        self.requests.append(parsed)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        script = self.script
        if script.error is not None:
            return self.error(*script.error)
        message_id = f"msg_{len(self.requests)}"
        if not parsed.stream:
            return web.json_response(
                unary_message(script.completion, script.usage, message_id, parsed.model)
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        encoder = MessagesStream(message_id, parsed.model)
        await response.write(encoder.start(count_tokens_estimate(parsed)["input_tokens"]))
        await response.write(encoder.ping())
        for i, piece in enumerate(script.chunks):
            if script.fail_after == i:
                await response.write(encoder.fail(*script.fail))
                break
            await response.write(encoder.feed(piece))
        await response.write(encoder.finish(script.usage))
        await response.write_eof()
        return response

    async def count_tokens(self, request: web.Request) -> web.Response:
        try:
            parsed = parse_count_tokens(orjson.loads(await request.read()), request.headers)
        except GatewayError as exc:
            return self.error(exc.status, exc.message, exc.code)
        return web.json_response(count_tokens_estimate(parsed, image_bound=100))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    made = Server()
    await made.start()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{server.port}",
        api_key="kt_live_test",
        max_retries=0,
        timeout=15,
    )
    try:
        yield sdk
    finally:
        await sdk.close()


def call(
    index: int, arguments: str, id_: str | None = None, name: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id_ is not None:
        out["id"] = id_
        out["type"] = "function"
        out["function"]["name"] = name
    return out


def completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
    }


def assert_usage(usage: Any, expected: Usage = USAGE) -> None:
    """The SDK's usage is the Usage given, in Anthropic's terms (input: uncached)."""
    assert usage.input_tokens == (
        expected.input_tokens - expected.cached_input_tokens - expected.cache_creation_input_tokens
    )
    assert usage.cache_read_input_tokens == expected.cached_input_tokens
    assert usage.cache_creation_input_tokens == expected.cache_creation_input_tokens
    assert usage.output_tokens == expected.output_tokens


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "It is "}),
    chunk({"content": "sunny in "}),
    chunk({"content": "Paris."}),
    chunk({}, "stop"),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {}},
]


# --------------------------------------------------------------------------- unary


async def test_create_text(server: Server, client: anthropic.AsyncAnthropic) -> None:
    server.script = Script(completion=completion({"role": "assistant", "content": "Sunny."}))
    message = await client.messages.create(
        model="my-alias",
        max_tokens=300,
        system="Be brief.",
        messages=MESSAGES,
        metadata={"user_id": "u-1"},
        extra_headers={"anthropic-beta": "beta-one,beta-two"},
    )
    assert message.id == "msg_1"
    assert message.model == "my-alias"
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    [block] = message.content
    assert block.type == "text"
    assert block.text == "Sunny."
    assert_usage(message.usage)
    # What the SDK sent, as the surface read it.
    [request] = server.requests
    sent = server.headers[0]["anthropic-version"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", sent)
    assert request.anthropic_version == sent
    assert request.anthropic_beta == ("beta-one", "beta-two")
    assert request.chat_body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert request.chat_body["max_completion_tokens"] == 300
    assert request.chat_body["user"] == "u-1"


async def test_create_tool_use_blocks_with_parsed_input(
    server: Server, client: anthropic.AsyncAnthropic
) -> None:
    server.script = Script(
        completion=completion(
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            "tool_calls",
        )
    )
    message = await client.messages.create(
        model="my-alias",
        max_tokens=300,
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": False},
    )
    assert message.stop_reason == "tool_use"
    text, first, second = message.content
    assert text.type == "text"
    assert text.text == "Checking both."
    assert first.type == "tool_use"
    assert second.type == "tool_use"
    assert (first.id, first.name, first.input) == ("call_1", "get_weather", {"city": "Paris"})
    assert (second.id, second.input) == ("call_2", {"city": "Rome"})
    assert server.requests[0].chat_body["tool_choice"] == "required"
    # The tool loop's next turn: the answer's blocks echoed back (every unset field as
    # null, as model_dump() gives them), then the results.
    server.script = Script(completion=completion({"role": "assistant", "content": "18 and 21."}))
    turns: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
            ],
        },
    ]
    follow = await client.messages.create(
        model="my-alias", max_tokens=300, messages=turns, tools=[WEATHER_TOOL]
    )
    assert follow.content[0].type == "text"
    roles = [m["role"] for m in server.requests[1].chat_body["messages"]]
    assert roles == ["user", "assistant", "tool", "tool"]


@pytest.mark.parametrize(
    ("finish", "choice", "expected", "sequence"),
    [
        ("length", {}, "max_tokens", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("content_filter", {}, "refusal", None),
    ],
)
async def test_create_stop_reasons(
    server: Server,
    client: anthropic.AsyncAnthropic,
    finish: str,
    choice: dict[str, Any],
    expected: str,
    sequence: str | None,
) -> None:
    server.script = Script(
        completion=completion({"role": "assistant", "content": "1, 2"}, finish, **choice)
    )
    message = await client.messages.create(
        model="my-alias", max_tokens=5, messages=MESSAGES, stop_sequences=["END"]
    )
    assert message.stop_reason == expected
    assert message.stop_sequence == sequence
    assert server.requests[0].chat_body["stop"] == ["END"]


# --------------------------------------------------------------------------- streams


async def test_stream_text_and_final_message(
    server: Server, client: anthropic.AsyncAnthropic
) -> None:
    server.script = Script(chunks=TEXT_CHUNKS)
    async with client.messages.stream(
        model="my-alias", max_tokens=300, messages=MESSAGES
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["It is ", "sunny in ", "Paris."]
    assert final.id == "msg_1"
    assert final.model == "my-alias"
    assert final.stop_reason == "end_turn"
    [block] = final.content
    assert block.type == "text"
    assert block.text == "It is sunny in Paris."
    assert_usage(final.usage)
    assert server.requests[0].stream is True


async def test_stream_thinking_and_interleaved_tool_calls(
    server: Server, client: anthropic.AsyncAnthropic
) -> None:
    server.script = Script(
        chunks=[
            chunk({"role": "assistant", "reasoning_content": "Two cities, "}),
            chunk({"reasoning_content": "two calls."}),
            chunk({"content": "Checking."}),
            chunk({"tool_calls": [call(0, "", "call_1", "get_weather")]}),
            chunk({"tool_calls": [call(0, '{"city": ')]}),
            chunk({"tool_calls": [call(1, '{"city": ', "call_2", "get_weather")]}),
            chunk({"tool_calls": [call(0, '"Paris"}')]}),
            chunk({"tool_calls": [call(1, '"Rome"}')]}),
            chunk({}, "tool_calls"),
        ]
    )
    async with client.messages.stream(
        model="my-alias",
        max_tokens=20000,
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        thinking={"type": "enabled", "budget_tokens": 10000},
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds.count("content_block_start") == 4
    assert final.stop_reason == "tool_use"
    thinking, text, first, second = final.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "Two cities, two calls."
    assert text.type == "text"
    assert text.text == "Checking."
    assert first.type == "tool_use"
    assert second.type == "tool_use"
    assert (first.id, first.name, first.input) == ("call_1", "get_weather", {"city": "Paris"})
    assert (second.id, second.name, second.input) == ("call_2", "get_weather", {"city": "Rome"})
    assert_usage(final.usage)
    assert server.requests[0].chat_body["reasoning_effort"] == "medium"


@pytest.mark.parametrize(
    ("finish", "extra", "expected"),
    [("length", {}, "max_tokens"), ("stop", {"stop_reason": "###"}, "stop_sequence")],
)
async def test_stream_stop_reasons(
    server: Server,
    client: anthropic.AsyncAnthropic,
    finish: str,
    extra: dict[str, Any],
    expected: str,
) -> None:
    usage = Usage(input_tokens=11, output_tokens=5)
    server.script = Script(
        chunks=[chunk({"content": "1, 2, 3"}), chunk(choices=[choice({}, finish, **extra)])],
        usage=usage,
    )
    async with client.messages.stream(model="my-alias", max_tokens=5, messages=MESSAGES) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == expected
    assert final.stop_sequence == ("###" if expected == "stop_sequence" else None)
    assert_usage(final.usage, usage)


async def test_raw_stream_events(server: Server, client: anthropic.AsyncAnthropic) -> None:
    """``create(stream=True)``: the raw events, message_start's usage the estimate."""
    server.script = Script(chunks=TEXT_CHUNKS)
    stream = await client.messages.create(
        model="my-alias", max_tokens=300, messages=MESSAGES, stream=True
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start"
    estimate = count_tokens_estimate(server.requests[0])["input_tokens"]
    assert start.message.usage.input_tokens == estimate
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == USAGE.output_tokens


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "code", "exception"),
    [
        (401, "unauthorized", anthropic.AuthenticationError),
        (402, "budget_exhausted", anthropic.APIStatusError),
        (403, "forbidden", anthropic.PermissionDeniedError),
        (404, "not_found", anthropic.NotFoundError),
        (429, "rate_limit_exceeded", anthropic.RateLimitError),
        (502, "upstream_failed", anthropic.InternalServerError),
        (503, "service_unavailable", anthropic.InternalServerError),
    ],
)
async def test_error_bodies_surface_in_the_sdk(
    server: Server,
    client: anthropic.AsyncAnthropic,
    status: int,
    code: str,
    exception: type[anthropic.APIStatusError],
) -> None:
    reason = f"project budget would be exceeded ({status})"
    server.script = Script(error=(status, reason, code))
    with pytest.raises(exception) as info:
        await client.messages.create(model="my-alias", max_tokens=5, messages=MESSAGES)
    exc = info.value
    assert exc.status_code == status
    assert reason in str(exc)
    assert reason in exc.message
    body = exc.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == error_body(status, reason, code)["error"]["type"]
    assert body["error"]["details"] == {"error_code": code}


async def test_402_is_a_billing_error(server: Server, client: anthropic.AsyncAnthropic) -> None:
    server.script = Script(error=(402, "the day's cost cap is reached", "budget_exhausted"))
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(model="my-alias", max_tokens=5, messages=MESSAGES)
    assert info.value.status_code == 402
    body = info.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "billing_error"
    assert "the day's cost cap is reached" in str(info.value)


async def test_a_refused_request_surfaces_its_field(
    server: Server, client: anthropic.AsyncAnthropic
) -> None:
    """parse_request's 422 (a server tool), through error_body, in the SDK's exception."""
    with pytest.raises(anthropic.UnprocessableEntityError) as info:
        await client.messages.create(
            model="my-alias",
            max_tokens=5,
            messages=MESSAGES,
            tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}],
        )
    assert "priced apart" in str(info.value)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["details"] == {"error_code": "validation_failed"}
    assert server.requests == []


async def test_a_mid_stream_failure_raises_with_its_message(
    server: Server, client: anthropic.AsyncAnthropic
) -> None:
    server.script = Script(
        chunks=TEXT_CHUNKS, fail_after=2, fail=("upstream_timeout", "the provider went quiet")
    )
    texts: list[str] = []

    async def read() -> None:
        async with client.messages.stream(
            model="my-alias", max_tokens=300, messages=MESSAGES
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)

    with pytest.raises(anthropic.APIStatusError) as info:
        await read()
    assert texts == ["It is "]
    assert "the provider went quiet" in str(info.value)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "timeout_error"


# --------------------------------------------------------------------------- count_tokens


async def test_count_tokens(server: Server, client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.count_tokens(
        model="my-alias",
        system="Be brief.",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}},
                ],
            }
        ],
        tools=[WEATHER_TOOL],
    )
    expected = count_tokens_estimate(
        parse_count_tokens(
            {
                "model": "my-alias",
                "system": "Be brief.",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://e.com/a.png"},
                            },
                        ],
                    }
                ],
                "tools": [WEATHER_TOOL],
            },
            {},
        ),
        image_bound=100,
    )
    assert counted.input_tokens == expected["input_tokens"]
    assert counted.input_tokens > 100  # an upper bound: the image alone counts 100
