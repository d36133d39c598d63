"""One agent turn of the OpenAI Agents SDK (its default model is the Responses API)
with a function tool, through the gateway to the scripted OpenAI-compatible upstream:
the tool is called, its output sent back, the final answer read, and the project billed
exactly what the upstream reported for both calls."""

from __future__ import annotations

import json
from typing import Any

import openai
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from redis.asyncio import Redis

from tests.support.redis import wait_released, window_ids
from tests.support.upstream import FakeUpstream, Reply, openai_completion


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    completion = openai_completion(prompt_tokens=40, completion_tokens=9)
    completion["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_w1",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }
    completion["choices"][0]["finish_reason"] = "tool_calls"
    return completion


async def test_an_agent_turn_with_a_function_tool(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    set_tracing_disabled(True)
    client, config, creds = await make_gateway()
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    upstream.script(
        Reply(json=tool_call("get_weather", {"city": "Paris"})),
        Reply(
            json=openai_completion("It is sunny in Paris.", prompt_tokens=60, completion_tokens=7)
        ),
    )
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        agent = Agent(
            name="weather",
            instructions="Answer with the weather tool.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model="default", openai_client=api),
        )
        result = await Runner.run(agent, "What is the weather in Paris?")
    finally:
        await api.close()
    assert calls == ["Paris"]
    assert result.final_output == "It is sunny in Paris."
    first, second = upstream.requests
    assert first.json()["tools"][0]["function"]["name"] == "get_weather"
    roles = [m["role"] for m in second.json()["messages"]]
    assert roles[-1] == "tool"
    assert second.json()["messages"][-1]["content"] == "sunny in Paris"
    prefix = config.gateway.redis.key_prefix
    key = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['lifetime']}"
    state = await wait_released(redis, key)
    assert (state["u0"], state["u1"]) == (40 + 60, 9 + 7)
