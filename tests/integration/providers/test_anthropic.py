"""The Anthropic Messages upstream through the whole gateway (DESIGN sections 2, 5.3, 6).

A provider of kind ``anthropic`` points at the fake upstream (real TCP), which serves
the recorded Anthropic streams of tests/data in 97-byte slices and scripted variants.
Clients are the official ``openai`` SDK and raw HTTP: they must see plain OpenAI
answers, and the budget must settle exactly what Anthropic reported, cache writes and
reads each at their own price.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import openai
import pytest

import gateway.sse
from gateway.config import ProviderConfig, Timeouts
from gateway.providers.anthropic import AnthropicProvider, AnthropicStreamTranslator
from gateway.providers.base import UpstreamRequest
from gateway.providers.transport import HttpChunkStream
from gateway.usage import Usage, input_token_bound
from tests.support.billing import dimensions, report_row, usage_settled
from tests.support.harness import (
    PROVIDER_KEY,
    Client,
    Credentials,
    Gateway,
    GatewayFactory,
    SdkFactory,
    bearer,
    chat_body,
    chat_url,
)
from tests.support.sdk import collect, text_of
from tests.support.sse import parse_sse
from tests.support.upstream import (
    FakeUpstream,
    Reply,
    anthropic_error,
    anthropic_message,
    anthropic_stream,
    fixture,
)

CLAUDE = "claude-sonnet-4-5"
KARTA, OPENAI_PROFILE = "claude", "claude-oai"  # project slugs, one per wire profile
PROJECTS = [KARTA, OPENAI_PROFILE]
CEILING = 100  # harness: every project has max_output_tokens 100
# USD per Mtok, i.e. nano-USD per token: 3000 input, 15000 output, 300 read, 3750 write.
PRICE = {"input": "3", "output": "15", "cached_input": "0.30", "cache_write": "3.75"}
IN, OUT, READ, WRITE = 3_000, 15_000, 300, 3_750
TEXT_FIXTURE = "anthropic_messages_text_cache_usage.sse"
TOOL_FIXTURE = "anthropic_messages_tool_use.sse"
TOOL_ID = "toolu_01NRLabsLyVHZPKxbKvkfSMn"
TOOL_ARGS = '{"location": "Paris"}'
TOOL_TEXT = "I'll check the current weather in Paris for you."
OVERLOADED = (
    b"event: error\n"
    b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
)
MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 1 + 1?"},
]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}

# The SDK's stream helper in openai-python before 3.x auto-parses only strict function
# tools (the declared floor is 1.97.2); the gateway relays either kind the same way.
STRICT_WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        **WEATHER_TOOL["function"],
        "strict": True,
        "parameters": {**WEATHER_TOOL["function"]["parameters"], "additionalProperties": False},
    },
}


def overrides(upstream: FakeUpstream, attempts: int = 1) -> dict[str, Any]:
    """make_gateway() arguments: an ``anthropic`` provider and projects routed to it."""
    route = {"default": {"routes": [{"provider": "claude", "model": CLAUDE}]}}
    return {
        "gateway": {
            "providers": {
                "claude": {
                    "kind": "anthropic",
                    "base_url": upstream.base_url,
                    "api_key_env": "TEST_PROVIDER_KEY",
                    "timeouts": {"connect": 2, "first_byte": 2, "idle": 2, "total": 10},
                }
            },
            "prices": {CLAUDE: PRICE},
            "resilience": {"retries": {"attempts_per_target": attempts, "backoff_base_ms": 10}},
        },
        "projects": {
            KARTA: {"models": route},
            OPENAI_PROFILE: {"models": route, "wire_profile": "openai"},
        },
    }


@pytest.fixture
async def claude(make_gateway: GatewayFactory, upstream: FakeUpstream) -> Gateway:
    client, config, creds = await make_gateway(**overrides(upstream))
    return client, config, creds


def with_error_before(raw: bytes, marker: bytes, frame: bytes = OVERLOADED) -> bytes:
    """``raw`` with ``frame`` inserted before the event that contains ``marker``."""
    cut = raw.rindex(b"event:", 0, raw.index(marker))
    return raw[:cut] + frame + raw[cut:]


# --------------------------------------------------------------------------- SDK: streams


@pytest.mark.parametrize("project", PROJECTS, ids=["karta", "openai"])
async def test_sdk_stream_of_the_recorded_text_fixture(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = claude
    upstream.script(Reply(sse=fixture(TEXT_FIXTURE)))
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)
    assert text_of(chunks) == "2"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"default"}  # the alias, never Anthropic's model
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    # message_delta's output_tokens is cumulative: 5, not message_start's 1 + 5.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (20, 5, 25)
    assert all(c.usage is None for c in chunks[:-1])
    assert await usage_settled(client, creds.key, project) == dimensions(20, 5, 20 * IN + 5 * OUT)


@pytest.mark.parametrize("project", PROJECTS, ids=["karta", "openai"])
async def test_sdk_stream_of_the_recorded_tool_use_fixture(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    """The recording ends without a final blank line (its message_stop is never
    dispatched by a strict parser): usage must still be counted and relayed."""
    client, _, creds = claude
    upstream.script(Reply(sse=fixture(TOOL_FIXTURE)))
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)
    assert text_of(chunks) == TOOL_TEXT
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += delta.id or ""
            if delta.function is not None:
                slot["name"] += delta.function.name or ""
                slot["arguments"] += delta.function.arguments or ""
    assert calls == {0: {"id": TOOL_ID, "name": "get_weather", "arguments": TOOL_ARGS}}
    assert json.loads(calls[0]["arguments"]) == {"location": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (377, 65, 442)
    assert await usage_settled(client, creds.key, project) == dimensions(
        377, 65, 377 * IN + 65 * OUT
    )
    sent = upstream.last.json()
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]


@pytest.mark.parametrize("project", PROJECTS, ids=["karta", "openai"])
async def test_sdk_stream_helper_final_completion_with_a_tool_call(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = claude
    upstream.script(Reply(sse=fixture(TOOL_FIXTURE)))
    async with sdk(client, creds.key, project).chat.completions.stream(
        model="default",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[STRICT_WEATHER_TOOL],
        stream_options={"include_usage": True},
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == TOOL_TEXT
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == TOOL_ID
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == TOOL_ARGS
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (377, 65)


async def test_sdk_stream_without_include_usage_still_settles(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = claude
    upstream.script(Reply(sse=fixture(TEXT_FIXTURE)))
    stream = await sdk(client, creds.key, KARTA).chat.completions.create(
        model="default", messages=MESSAGES, stream=True
    )
    chunks = await collect(stream)
    assert text_of(chunks) == "2"
    assert all(c.choices and c.usage is None for c in chunks)  # kept by the gateway
    assert await usage_settled(client, creds.key, KARTA) == dimensions(20, 5, 20 * IN + 5 * OUT)


# --------------------------------------------------------------------------- SDK: unary


@pytest.mark.parametrize(
    ("project", "unary_object"),
    [(KARTA, "text_completion"), (OPENAI_PROFILE, "chat.completion")],
    ids=["karta", "openai"],
)
async def test_sdk_unary(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str, unary_object: str
) -> None:
    client, _, creds = claude
    completion = await sdk(client, creds.key, project).chat.completions.create(
        model="default", messages=MESSAGES
    )
    # The fake's default Anthropic message: "Hello there", 11 in / 3 out.
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.object == unary_object
    assert completion.model == "default"
    assert completion.id.startswith("chatcmpl_")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 3)
    assert completion.usage.total_tokens == 14
    assert await usage_settled(client, creds.key, project) == dimensions(11, 3, 11 * IN + 3 * OUT)


CITY_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "city",
        "schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


async def test_sdk_json_mode_unary_and_stream(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    """response_format reaches Claude as one forced tool, and its input comes back as
    the JSON content (before, it was silently dropped: prose where JSON was asked)."""
    client, _, creds = claude
    message = anthropic_message("", CLAUDE, 40, 12, "tool_use")
    message["content"] = [
        {"type": "tool_use", "id": TOOL_ID, "name": "json_answer", "input": {"location": "Paris"}}
    ]
    upstream.script(Reply(json=message))
    api = sdk(client, creds.key, KARTA)
    ask: list[Any] = [{"role": "user", "content": "Which city? Answer in JSON."}]
    completion = await api.chat.completions.create(
        model="default", messages=ask, response_format=CITY_FORMAT
    )
    sent = upstream.last.json()
    assert sent["tools"][0]["name"] == "json_answer"
    assert sent["tools"][0]["input_schema"] == CITY_FORMAT["json_schema"]["schema"]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_answer"}
    choice = completion.choices[0]
    assert json.loads(choice.message.content or "") == {"location": "Paris"}
    assert not choice.message.tool_calls
    assert choice.finish_reason == "stop"

    # The recorded tool-use stream, its tool renamed to the answer tool.
    raw = fixture(TOOL_FIXTURE).replace(b'"name":"get_weather"', b'"name":"json_answer"')
    upstream.script(Reply(sse=raw))
    chunks = await collect(
        await api.chat.completions.create(
            model="default", messages=ask, response_format={"type": "json_object"}, stream=True
        )
    )
    assert upstream.last.json()["tool_choice"] == {"type": "tool", "name": "json_answer"}
    assert json.loads(text_of(chunks)) == {"location": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def _reserved_input(client: Client, creds: Credentials) -> int:
    """The project's reserved input tokens (month window) once something is held."""
    async with asyncio.timeout(5):
        while True:
            resp = await client.get(f"/v1/projects/{KARTA}/usage", headers=bearer(creds.key))
            report = await resp.json()
            month = report_row(report, "project", "month")
            held = int(month["dimensions"]["input_tokens"]["reserved"])
            if held:
                return held
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("extra", "overhead"),
    [
        ({}, 0),
        ({"response_format": {"type": "json_object"}}, 800),
        ({"tools": [WEATHER_TOOL]}, 800),
    ],
    ids=["plain", "json-mode", "tools"],
)
async def test_the_reservation_covers_anthropics_tool_prompt(
    claude: Gateway, upstream: FakeUpstream, extra: dict[str, Any], overhead: int
) -> None:
    """Anthropic adds a tool-use system prompt (a few hundred tokens) to any request
    with a tool, the forced JSON-answer tool included: the input reservation holds it."""
    client, config, creds = claude
    body = chat_body(**extra)
    upstream.script(Reply(json=anthropic_message("{}", CLAUDE), delay_before_headers=0.5))
    call = asyncio.create_task(client.post(chat_url(KARTA), json=body, headers=bearer(creds.key)))
    try:
        bound = input_token_bound(body, config.gateway.limits.image_token_bound)
        assert await _reserved_input(client, creds) == bound + overhead
    finally:
        assert (await call).status == 200


async def test_json_mode_with_tools_is_refused_before_any_call(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    resp = await client.post(
        chat_url(KARTA),
        json=chat_body(response_format={"type": "json_object"}, tools=[WEATHER_TOOL]),
        headers=bearer(creds.key),
    )
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["param"] == "response_format"
    assert upstream.requests == []


async def test_sdk_unary_tool_use(claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory) -> None:
    client, _, creds = claude
    message = anthropic_message("Let me check.", CLAUDE, 377, 65, "tool_use")
    message["content"].append(
        {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {"location": "Paris"}}
    )
    upstream.script(Reply(json=message))
    completion = await sdk(client, creds.key, KARTA).chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert (call.id, call.function.name) == (TOOL_ID, "get_weather")
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    assert upstream.last.json()["tool_choice"] == {"type": "any"}


async def test_sdk_tool_round_trip_is_sent_as_tool_use_and_tool_result(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = claude
    await sdk(client, creds.key, KARTA).chat.completions.create(
        model="default",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": TOOL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": TOOL_ARGS},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": TOOL_ID, "content": "18C and sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert upstream.last.json()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": TOOL_ID,
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": TOOL_ID, "content": "18C and sunny"}
            ],
        },
    ]


# --------------------------------------------------------------------------- what Anthropic gets


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_what_anthropic_receives(
    claude: Gateway, upstream: FakeUpstream, stream: bool
) -> None:
    client, _, creds = claude
    body = {
        "messages": MESSAGES,
        "max_tokens": 5000,  # clamped to the project's ceiling (100)
        "temperature": 1.5,  # clamped to Anthropic's 0..1
        "top_p": 0.5,  # not sent with temperature (recent models refuse both)
        "stop": "END",
        "user": "end-user-7",
        "seed": 42,
        "reasoning_effort": "high",
        "stream": stream,
    }
    resp = await client.post(
        chat_url(KARTA),
        json=body,
        headers={**bearer(creds.key), "Cookie": "session=client-cookie"},
    )
    assert resp.status == 200, await resp.text()
    await resp.read()
    [rec] = upstream.requests
    assert rec.method == "POST"
    assert rec.path == "/v1/messages"
    assert rec.header("x-api-key") == PROVIDER_KEY
    assert rec.header("Authorization") is None
    assert rec.header("Cookie") is None
    assert rec.header("anthropic-version") == "2023-06-01"
    assert rec.header("Content-Type") == "application/json"
    for name, value in rec.headers.items():
        assert creds.key not in value, name
    assert creds.key.encode() not in rec.body
    sent = rec.json()
    expected: dict[str, Any] = {
        "model": CLAUDE,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 1 + 1?"}]}],
        "max_tokens": CEILING,
        "temperature": 1.0,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "end-user-7"},
    }
    if stream:
        expected["stream"] = True
    # nothing OpenAI-only (seed, reasoning_effort, stream_options, max_completion_tokens)
    assert sent == expected


async def test_system_cache_control_reaches_anthropic(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = claude
    manual = "A long operating manual. " * 20
    part = {"type": "text", "text": manual, "cache_control": {"type": "ephemeral"}}
    messages: Any = [{"role": "system", "content": [part]}, {"role": "user", "content": "Hi"}]
    await sdk(client, creds.key, KARTA).chat.completions.create(model="default", messages=messages)
    assert upstream.last.json()["system"] == [part]


async def test_max_tokens_below_the_ceiling_is_kept(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    resp = await client.post(
        chat_url(KARTA), json=chat_body(max_completion_tokens=12), headers=bearer(creds.key)
    )
    assert resp.status == 200, await resp.text()
    assert upstream.last.json()["max_tokens"] == 12


async def test_unsupported_n_is_422_and_nothing_is_sent(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    resp = await client.post(chat_url(KARTA), json=chat_body(n=2), headers=bearer(creds.key))
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] == "validation_failed"
    assert body["param"] == "n"
    assert upstream.requests == []
    assert await usage_settled(client, creds.key, KARTA) == dimensions(0, 0, 0)


LEGACY_CALL = {"name": "get_weather", "arguments": TOOL_ARGS}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"functions": [WEATHER_TOOL["function"]], "function_call": "auto"}, "functions"),
        ({"function_call": {"name": "get_weather"}}, "function_call"),
        ({"stop": ["END", "\n"]}, "stop"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": None, "function_call": LEGACY_CALL},
                    {"role": "user", "content": "And tomorrow?"},
                ]
            },
            "messages[1].function_call",
        ),
    ],
    ids=["logit_bias", "functions", "function_call", "stop", "history"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_what_anthropic_cannot_honour_is_422_and_nothing_is_sent(
    claude: Gateway, upstream: FakeUpstream, extra: dict[str, Any], param: str, stream: bool
) -> None:
    """Refused naming the field, before any upstream call, and nothing is billed."""
    client, _, creds = claude
    resp = await client.post(
        chat_url(KARTA), json=chat_body(stream=stream, **extra), headers=bearer(creds.key)
    )
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    assert body["error"] == "validation_failed"
    assert body["param"] == param
    assert upstream.requests == []
    assert await usage_settled(client, creds.key, KARTA) == dimensions(0, 0, 0)


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_settled_budget_prices_cache_writes_and_reads_separately(
    claude: Gateway, upstream: FakeUpstream, stream: bool
) -> None:
    client, _, creds = claude
    usage: dict[str, Any] = {
        "input_tokens": 50,
        "output_tokens": 70,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 3000,
    }
    if stream:
        upstream.script(Reply(sse=anthropic_stream(["Hel", "lo"], CLAUDE, **usage)))
    else:
        upstream.script(Reply(json=anthropic_message("Hello", CLAUDE, **usage)))
    body = chat_body(stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    resp = await client.post(chat_url(KARTA), json=body, headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    if stream:
        events = parse_sse(await resp.read())
        reported = json.loads(events[-2].data)["usage"]
    else:
        reported = (await resp.json())["usage"]
    # Every input token, whichever way it was billed, counts as a prompt token.
    assert reported["prompt_tokens"] == reported["input_tokens"] == 4050
    assert reported["completion_tokens"] == reported["output_tokens"] == 70
    assert reported["prompt_tokens_details"] == {
        "cached_tokens": 3000,
        "cache_creation_tokens": 1000,
    }
    cost = 50 * IN + 3000 * READ + 1000 * WRITE + 70 * OUT
    assert cost == 5_850_000
    assert await usage_settled(client, creds.key, KARTA) == dimensions(4050, 70, cost)


# --------------------------------------------------------------------------- failures mid-stream


@pytest.mark.parametrize("project", PROJECTS, ids=["karta", "openai"])
async def test_midstream_overloaded_error_raises_api_error_in_the_sdk(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = claude
    upstream.script(Reply(sse=with_error_before(fixture(TOOL_FIXTURE), b"'ll check")))
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        await collect(stream, received)
    assert type(info.value) is openai.APIError
    assert info.value.message == "the provider reported an error (overloaded_error)"
    assert text_of(received) == "I"  # what came before the error frame was relayed
    assert all(c.usage is None for c in received)
    # No usage arrived: the unknown output is billed at the reserved ceiling.
    assert (await usage_settled(client, creds.key, project))["output_tokens"] == CEILING


async def test_midstream_overloaded_error_event_on_the_wire(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    upstream.script(Reply(sse=with_error_before(fixture(TOOL_FIXTURE), b'"partial_json":"ar"')))
    resp = await client.post(
        chat_url(KARTA), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    assert resp.status == 200
    events = parse_sse(await resp.read())
    assert all(e.event == "chunk" for e in events[:-1])
    error = events[-1]
    assert error.event == "error"
    payload = json.loads(error.data)
    assert payload["type"] == "error"
    assert payload["data"] == {
        "code": "upstream_error",
        "provider": "claude",
        "message": "the provider reported an error (overloaded_error)",
    }
    assert payload["error"]["message"] == "the provider reported an error (overloaded_error)"
    args = "".join(
        call["function"].get("arguments") or ""
        for e in events[:-1]
        for choice in json.loads(e.data)["choices"]
        for call in choice["delta"].get("tool_calls") or ()
    )
    assert args == '{"location": "P'


async def test_overloaded_right_after_message_start_is_502_before_any_byte(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    raw = with_error_before(fixture(TEXT_FIXTURE), b"event: content_block_start")
    upstream.script(Reply(sse=raw))
    resp = await client.post(
        chat_url(KARTA), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    assert resp.status == 502
    assert resp.content_type == "application/json"
    # The provider declined before generating anything: nothing is billed.
    assert await usage_settled(client, creds.key, KARTA) == dimensions(0, 0, 0)


async def test_overloaded_right_after_message_start_is_retried(
    make_gateway: GatewayFactory, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = await make_gateway(**overrides(upstream, attempts=2))
    raw = with_error_before(fixture(TEXT_FIXTURE), b"event: content_block_start")
    upstream.script(Reply(sse=raw), Reply(sse=fixture(TEXT_FIXTURE)))
    stream = await sdk(client, creds.key, KARTA).chat.completions.create(
        model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)
    assert text_of(chunks) == "2"
    assert len(upstream.requests) == 2
    assert await usage_settled(client, creds.key, KARTA) == dimensions(20, 5, 20 * IN + 5 * OUT)


async def test_stream_cut_before_message_delta_raises_api_error(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = claude
    raw = fixture(TEXT_FIXTURE)
    upstream.script(Reply(sse=raw[: raw.index(b"event: message_delta")]))
    stream = await sdk(client, creds.key, KARTA).chat.completions.create(
        model="default", messages=MESSAGES, stream=True
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError):
        await collect(stream, received)
    assert text_of(received) == "2"
    assert (await usage_settled(client, creds.key, KARTA))["output_tokens"] == CEILING


# --------------------------------------------------------------------------- errors before the stream


async def test_401_from_anthropic_is_422_byok_key_rejected(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    upstream.script(
        Reply(
            status=401,
            json=anthropic_error("authentication_error", f"invalid x-api-key {PROVIDER_KEY}"),
        )
    )
    resp = await client.post(chat_url(KARTA), json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 422
    text = await resp.text()
    assert PROVIDER_KEY not in text
    body = json.loads(text)
    assert body["error"] == "byok_key_rejected"
    assert body["provider"] == "claude"
    assert await usage_settled(client, creds.key, KARTA) == dimensions(0, 0, 0)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_529_overloaded_is_502(claude: Gateway, upstream: FakeUpstream, stream: bool) -> None:
    client, _, creds = claude
    upstream.script(Reply(status=529, json=anthropic_error("overloaded_error", "Overloaded")))
    resp = await client.post(
        chat_url(KARTA), json=chat_body(stream=stream), headers=bearer(creds.key)
    )
    assert resp.status == 502
    assert "detail" in await resp.json()
    assert await usage_settled(client, creds.key, KARTA) == dimensions(0, 0, 0)


async def test_529_is_retried_when_attempts_allow(
    make_gateway: GatewayFactory, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = await make_gateway(**overrides(upstream, attempts=2))
    upstream.script(Reply(status=529, json=anthropic_error("overloaded_error", "Overloaded")))
    completion = await sdk(client, creds.key, KARTA).chat.completions.create(
        model="default", messages=MESSAGES
    )
    assert completion.choices[0].message.content == "Hello there"
    assert len(upstream.requests) == 2


async def test_429_from_anthropic_keeps_retry_after(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    upstream.script(
        Reply(
            status=429,
            json=anthropic_error("rate_limit_error", "Number of request tokens has exceeded"),
            headers={"retry-after": "3"},
        )
    )
    resp = await client.post(chat_url(KARTA), json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"


async def test_400_from_anthropic_is_422_with_its_code(
    claude: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = claude
    upstream.script(
        Reply(
            status=400,
            json=anthropic_error("invalid_request_error", "messages.0.content: Field required"),
        )
    )
    resp = await client.post(chat_url(KARTA), json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] == "validation_failed"
    # The provider's text is never relayed (it can quote the key): its code is.
    assert body["message"] == "provider claude rejected the request (invalid_request_error)"


async def test_sdk_sees_the_status_errors(
    claude: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = claude
    api = sdk(client, creds.key, KARTA)
    upstream.script(Reply(status=401, json=anthropic_error("authentication_error", "invalid")))
    with pytest.raises(openai.UnprocessableEntityError):
        await api.chat.completions.create(model="default", messages=MESSAGES)
    upstream.script(Reply(status=529, json=anthropic_error("overloaded_error", "Overloaded")))
    with pytest.raises(openai.InternalServerError) as info:
        await api.chat.completions.create(model="default", messages=MESSAGES, stream=True)
    assert info.value.status_code == 502


# --------------------------------------------------------------------------- a 200 that is no answer


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_an_error_sent_with_a_200_is_retried_and_billed_at_nothing(
    make_gateway: GatewayFactory, upstream: FakeUpstream, stream: bool
) -> None:
    """An error object with a 200 (on a stream: JSON, not events): nothing was
    generated, so nothing is billed, and another attempt serves the request."""
    client, _, creds = await make_gateway(**overrides(upstream, attempts=2))
    upstream.script(Reply(json=anthropic_error("overloaded_error", "Overloaded")))
    resp = await client.post(
        chat_url(KARTA), json=chat_body(stream=stream), headers=bearer(creds.key)
    )
    assert resp.status == 200, await resp.text()
    await resp.read()
    assert len(upstream.requests) == 2
    assert await usage_settled(client, creds.key, KARTA) == dimensions(
        11, 3, 11 * IN + 3 * OUT
    )  # the second only


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_an_authentication_error_sent_with_a_200_is_422_byok_key_rejected(
    claude: Gateway, upstream: FakeUpstream, stream: bool
) -> None:
    client, _, creds = claude
    error = anthropic_error("authentication_error", f"invalid x-api-key {PROVIDER_KEY}")
    upstream.script(Reply(json=error))
    resp = await client.post(
        chat_url(KARTA), json=chat_body(stream=stream), headers=bearer(creds.key)
    )
    text = await resp.text()
    assert resp.status == 422, text
    assert PROVIDER_KEY not in text
    assert json.loads(text)["error"] == "byok_key_rejected"
    assert await usage_settled(client, creds.key, KARTA) == dimensions(0, 0, 0)


@pytest.mark.parametrize(
    "body",
    [b'{"id": "msg_1", "type": "mess', b'{"id": "msg_1", "type": "message", "content": "x"}'],
    ids=["invalid_json", "not_a_message"],
)
async def test_an_unreadable_unary_200_is_billed_and_not_retried(
    make_gateway: GatewayFactory, upstream: FakeUpstream, body: bytes
) -> None:
    """After its 200 the provider did (and bills) the work, whatever became of the
    answer: the worst case is billed, and a retry would pay for it twice."""
    client, _, creds = await make_gateway(**overrides(upstream, attempts=2))
    upstream.script(Reply(body=body, content_type="application/json"))
    resp = await client.post(chat_url(KARTA), json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 502, await resp.text()
    assert len(upstream.requests) == 1
    assert (await usage_settled(client, creds.key, KARTA))["output_tokens"] == CEILING


async def test_an_event_over_the_size_cap_ends_the_stream(
    claude: Gateway, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One endless line: the stream fails as soon as it is over the cap (not at the idle
    timeout), after the chunks before it; billed as a cut stream."""
    monkeypatch.setattr(gateway.sse, "MAX_EVENT_BYTES", 64 * 1024)
    client, _, creds = claude
    raw = anthropic_stream(["Hel", "lo"])
    head = raw[: raw.index(b"event: content_block_delta", raw.index(b"Hel"))]
    sse = head + b'event: content_block_delta\ndata: {"type": "' + b"a" * 200_000
    upstream.script(Reply(sse=sse, slice_size=16 * 1024, hang_after_bytes=len(sse)))
    resp = await client.post(
        chat_url(KARTA), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    assert resp.status == 200
    events = parse_sse(await resp.read())
    assert events[-1].event == "error"
    error = json.loads(events[-1].data)
    assert error["data"]["code"] == "upstream_error"
    assert "over 65536 bytes" in error["data"]["message"]
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hel"
    assert (await usage_settled(client, creds.key, KARTA))["output_tokens"] == CEILING
    await upstream.wait_disconnect()


# --------------------------------------------------------------------------- the adapter alone


def adapter_request(body: dict[str, Any]) -> UpstreamRequest:
    return UpstreamRequest(
        body={"model": CLAUDE, "max_completion_tokens": 50, **body},
        api_key=PROVIDER_KEY,
        timeouts=Timeouts(),
        request_id="req-test",
    )


async def test_adapter_directly_stream_and_unary(upstream: FakeUpstream) -> None:
    """AnthropicProvider against the fake over TCP, without the gateway around it."""
    config = ProviderConfig(kind="anthropic", base_url=upstream.base_url + "/")
    async with aiohttp.ClientSession() as session:
        provider = AnthropicProvider("claude", config, session)
        upstream.script(Reply(sse=fixture(TOOL_FIXTURE)))
        stream = await provider.open_stream(adapter_request({"messages": MESSAGES, "stream": True}))
        assert isinstance(stream, HttpChunkStream)
        assert isinstance(stream.translator, AnthropicStreamTranslator)
        try:
            chunks = [chunk async for batch in stream for chunk in batch]
        finally:
            await stream.aclose()
        assert stream.finished  # read to the end: the connection goes back to the pool
        assert isinstance(chunks[-1], Usage)
        assert chunks[-1].input_tokens == 377
        assert chunks[-1].output_tokens == 65
        assert upstream.last.path == "/v1/messages"
        assert upstream.last.json()["stream"] is True
        assert upstream.last.json()["max_tokens"] == 50

        completion, usage = await provider.complete(adapter_request({"messages": MESSAGES}))
        assert completion["choices"][0]["message"]["content"] == "Hello there"
        assert usage is not None
        assert usage.input_tokens == 11
        assert "stream" not in upstream.last.json()
        assert upstream.last.header("x-api-key") == PROVIDER_KEY


async def test_adapter_closes_an_unfinished_stream(upstream: FakeUpstream) -> None:
    config = ProviderConfig(kind="anthropic", base_url=upstream.base_url)
    async with aiohttp.ClientSession() as session:
        provider = AnthropicProvider("claude", config, session)
        raw = fixture(TEXT_FIXTURE)
        upstream.script(Reply(sse=raw, hang_after_bytes=raw.index(b"event: message_delta")))
        stream = await provider.open_stream(adapter_request({"messages": MESSAGES}))
        batches = stream.batches()
        assert isinstance(batches, AsyncGenerator)  # closed below, before its end
        first = (await anext(batches))[0]
        assert isinstance(first, dict)
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": "2"}
        await batches.aclose()
        await stream.aclose()  # not finished: the connection is dropped, generation stops
        await upstream.wait_disconnect()
