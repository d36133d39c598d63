"""The Responses API and Anthropic Messages through the official SDKs, against the
gateway (real socket) routed to the scripted OpenAI-compatible upstream (the
cross-format route: both surfaces are translated to chat completions), billed through
the one meter: the project's usage grows by exactly what the upstream reported."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from tests.support.harness import Gateway, GatewayFactory, bearer
from tests.support.redis import settled
from tests.support.upstream import FakeUpstream, Reply, openai_completion, openai_stream


def tokens(state: dict[str, int]) -> tuple[int, int]:
    return state.get("u0", 0), state.get("u1", 0)


@pytest.fixture
async def oai(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    client, _, creds = gateway
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    yield api
    await api.close()


@pytest.fixture
async def claude(gateway: Gateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client, _, creds = gateway
    api = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    yield api
    await api.close()


def tool_call_completion(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    completion = openai_completion(prompt_tokens=30, completion_tokens=12)
    completion["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }
    completion["choices"][0]["finish_reason"] = "tool_calls"
    return completion


# A Responses function tool (its parameters serve the Messages tool as well).
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


# ----------------------------------------------------------------------------- Responses


async def test_responses_create_is_billed_what_the_upstream_reported(
    gateway: Gateway, oai: openai.AsyncOpenAI, upstream: FakeUpstream, redis: Redis
) -> None:
    _, config, _ = gateway
    upstream.script(Reply(json=openai_completion("Paris.", prompt_tokens=21, completion_tokens=4)))
    response = await oai.responses.create(
        model="default", input="Capital of France?", instructions="Be terse.", max_output_tokens=50
    )
    assert response.output_text == "Paris."
    assert response.model == "default"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (21, 4)
    sent = upstream.last.json()
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent["max_completion_tokens"] == 50
    assert tokens(await settled(redis, config)) == (21, 4)
    stored = await oai.responses.retrieve(response.id)
    assert stored.output_text == "Paris."


async def test_responses_stream_helper_and_final_response(
    gateway: Gateway, oai: openai.AsyncOpenAI, upstream: FakeUpstream, redis: Redis
) -> None:
    _, config, _ = gateway
    sse = openai_stream(["Hel", "lo ", "there"], prompt_tokens=15, completion_tokens=3)
    upstream.script(Reply(sse=sse))
    deltas: list[str] = []
    async with oai.responses.stream(model="default", input="Hi") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert "".join(deltas) == "Hello there"
    assert final.output_text == "Hello there"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (15, 3)
    assert tokens(await settled(redis, config)) == (15, 3)


async def test_responses_function_call_then_continuation(
    gateway: Gateway, oai: openai.AsyncOpenAI, upstream: FakeUpstream, redis: Redis
) -> None:
    """A function call, then its output sent with previous_response_id: the second
    upstream call carries the stored turns (and the input bound counted them)."""
    _, config, _ = gateway
    upstream.script(
        Reply(json=tool_call_completion("get_weather", {"city": "Paris"})),
        Reply(json=openai_completion("Sunny.", prompt_tokens=40, completion_tokens=2)),
    )
    first = await oai.responses.create(
        model="default",
        input="Weather in Paris?",
        tools=[WEATHER],
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    second = await oai.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "Sunny."
    messages = upstream.last.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[0]["content"] == "Weather in Paris?"
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert tokens(await settled(redis, config)) == (30 + 40, 12 + 2)


async def test_responses_parse_with_a_pydantic_model(
    oai: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    class City(BaseModel):
        name: str
        population: int

    upstream.script(Reply(json=openai_completion('{"name": "Paris", "population": 2100000}')))
    parsed = await oai.responses.parse(model="default", input="Paris?", text_format=City)
    assert parsed.output_parsed == City(name="Paris", population=2_100_000)
    assert upstream.last.json()["response_format"]["type"] == "json_schema"


async def test_responses_refusals_in_openais_error_shape(
    oai: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await oai.responses.create(
            model="default", input="x", tools=[{"type": "web_search_preview"}]
        )
    assert "priced by the provider" in str(refused.value)
    assert refused.value.param == "tools[0].type"
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.responses.create(model="default", input="x", previous_response_id="resp_nope")
    assert "resp_nope" in str(missing.value)
    assert not upstream.requests


async def test_a_stored_response_is_another_credentials_404(
    gateway: Gateway, oai: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    response = await oai.responses.create(model="default", input="Hi")
    url = f"/v1/projects/alpha/responses/{response.id}"
    own = await client.get(url, headers=bearer(creds.key))
    assert own.status == 200
    other = await client.get(url, headers=bearer(creds.read_key))  # another API key
    assert other.status == 404
    assert (await other.json())["error"]["code"] == "not_found"


async def test_responses_budget_refusal_is_a_402_before_anything_is_sent(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        projects={"alpha": {"budgets": {"project": {"day": {"total_tokens": 50}}}}}
    )
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            await api.responses.create(model="default", input="Hi", max_output_tokens=100)
        assert refused.value.status_code == 402
        assert "max_tokens <=" in str(refused.value)
    finally:
        await api.close()
    assert not upstream.requests


# ------------------------------------------------------------------- Anthropic Messages


async def test_messages_create_with_x_api_key_is_billed_what_the_upstream_reported(
    gateway: Gateway, claude: anthropic.AsyncAnthropic, upstream: FakeUpstream, redis: Redis
) -> None:
    _, config, _ = gateway
    upstream.script(
        Reply(json=openai_completion("Bonjour.", prompt_tokens=18, completion_tokens=3))
    )
    message = await claude.messages.create(
        model="default",
        max_tokens=64,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert [block.type for block in message.content] == ["text"]
    [block] = message.content
    assert block.type == "text"
    assert block.text == "Bonjour."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (18, 3)
    sent = upstream.last.json()
    assert sent["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert sent["max_completion_tokens"] == 64
    assert "x-api-key" not in {k.lower() for k in upstream.last.headers}
    assert tokens(await settled(redis, config)) == (18, 3)


async def test_messages_stream_and_final_message(
    gateway: Gateway, claude: anthropic.AsyncAnthropic, upstream: FakeUpstream, redis: Redis
) -> None:
    _, config, _ = gateway
    upstream.script(Reply(sse=openai_stream(["Hi", " you"], prompt_tokens=9, completion_tokens=2)))
    async with claude.messages.stream(
        model="default", max_tokens=32, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hi you"
    assert final.usage.output_tokens == 2
    assert tokens(await settled(redis, config)) == (9, 2)


async def test_messages_tool_use(claude: anthropic.AsyncAnthropic, upstream: FakeUpstream) -> None:
    upstream.script(Reply(json=tool_call_completion("get_weather", {"city": "Oslo"})))
    message = await claude.messages.create(
        model="default",
        max_tokens=64,
        tools=[
            {
                "name": "get_weather",
                "description": "The weather",
                "input_schema": WEATHER["parameters"],
            }
        ],
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    )
    (block,) = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"city": "Oslo"})
    assert message.stop_reason == "tool_use"
    assert upstream.last.json()["tools"][0]["function"]["name"] == "get_weather"


async def test_messages_errors_in_anthropics_shape(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, _ = gateway
    bad = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key="kt_live_nope", max_retries=0
    )
    try:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await bad.messages.create(
                model="default", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        body: Any = refused.value.body  # the SDK types an error body as object
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
    finally:
        await bad.close()
    assert not upstream.requests


async def test_count_tokens_is_an_upper_bound_and_not_billed(
    gateway: Gateway, claude: anthropic.AsyncAnthropic, upstream: FakeUpstream, redis: Redis
) -> None:
    _, config, _ = gateway
    counted = await claude.messages.count_tokens(
        model="default", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert counted.input_tokens >= len("Hello there")
    assert not upstream.requests
    assert tokens(await settled(redis, config)) == (0, 0)
