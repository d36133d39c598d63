"""End to end: the official OpenAI SDK against a gateway whose models route to the
built-in demo provider (no upstream at all): function calls (unary, streamed through
the SDK's stream helper), ``chat.completions.parse()`` with a pydantic model, ``n``,
``stop`` and the output ceiling, with usage that counts what was streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.support.harness import GatewayFactory

MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
DEMO_ROUTE = {"default": {"routes": [{"provider": "demo", "model": "demo-1"}]}}
PROFILES = ["alpha", "beta"]  # karta and openai wire profiles


class GetWeather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


class Director(BaseModel):
    name: str
    born: int


class Movie(BaseModel):
    title: str
    year: int = Field(ge=1900)
    genres: list[Literal["drama", "comedy", "noir"]]
    rating: float
    sequel: bool
    director: Director
    tagline: str | None


Api = Callable[[str], openai.AsyncOpenAI]


@pytest.fixture
async def api(make_gateway: GatewayFactory) -> AsyncIterator[Api]:
    """An SDK client for a project (karta "alpha" or openai "beta") routed to the demo."""
    projects = {
        slug: {"models": DEMO_ROUTE, "max_output_tokens": 400} for slug in ("alpha", "beta")
    }
    client, _, creds = await make_gateway(projects=projects)
    clients: list[openai.AsyncOpenAI] = []

    def make(project: str) -> openai.AsyncOpenAI:
        made = openai.AsyncOpenAI(
            base_url=str(client.make_url(f"/v1/projects/{project}")),
            api_key=creds.key,
            max_retries=0,
            timeout=15,
        )
        clients.append(made)
        return made

    yield make
    for made in clients:
        await made.close()


def _tool() -> Any:
    return openai.pydantic_function_tool(GetWeather, name="get_weather")


# --------------------------------------------------------------------------- function calls


@pytest.mark.parametrize("project", PROFILES)
async def test_function_call_unary(api: Api, project: str) -> None:
    completion = await api(project).chat.completions.parse(
        model="default", messages=MESSAGES, tools=[_tool()]
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.parsed_arguments == GetWeather(city="demo", unit="celsius", days=1)
    assert json.loads(call.function.arguments) == {"city": "demo", "unit": "celsius", "days": 1}
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 1


@pytest.mark.parametrize("project", PROFILES)
async def test_function_call_streamed_through_the_sdk_helper(api: Api, project: str) -> None:
    sdk = api(project)
    async with sdk.chat.completions.stream(
        model="default",
        messages=MESSAGES,
        tools=[_tool()],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream_options={"include_usage": True},
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert len(done) == 1
    assert done[0].name == "get_weather"
    assert done[0].parsed_arguments == GetWeather(city="demo", unit="celsius", days=1)
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(deltas) > 1  # the arguments came in fragments
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id == "call_demo_0"
    assert call.function.parsed_arguments == done[0].parsed_arguments
    # Usage: the call's first delta (its name) plus one token per argument fragment.
    assert final.usage is not None
    assert final.usage.completion_tokens == 1 + len([d for d in deltas if d.arguments_delta])


async def test_function_call_raw_stream_deltas(api: Api) -> None:
    """As OpenAI streams a call: the first delta has id, type and name, later ones only
    argument fragments."""
    stream = await api("beta").chat.completions.create(
        model="default", messages=MESSAGES, tools=[_tool()], stream=True
    )
    calls = [
        c.choices[0].delta.tool_calls[0]
        async for c in stream
        if c.choices and c.choices[0].delta.tool_calls
    ]
    first, rest = calls[0], calls[1:]
    assert (first.id, first.type, first.index) == ("call_demo_0", "function", 0)
    assert first.function is not None
    assert first.function.name == "get_weather"
    assert rest
    assert all(c.id is None and c.function and c.function.name is None for c in rest)
    arguments = "".join(c.function.arguments or "" for c in rest if c.function)
    GetWeather.model_validate_json(arguments)


async def test_after_the_tool_result_the_answer_is_text(api: Api) -> None:
    sdk = api("alpha")
    first = await sdk.chat.completions.create(model="default", messages=MESSAGES, tools=[_tool()])
    (call,) = first.choices[0].message.tool_calls or []
    messages: list[Any] = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = await sdk.chat.completions.create(model="default", messages=messages, tools=[_tool()])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == (
        "The karta demo provider got the tool result: Sunny, 21 C"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_tool_choice_naming_no_tool_is_a_422(api: Api, stream: bool) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await api("beta").chat.completions.create(
            model="default",
            messages=MESSAGES,
            tools=[_tool()],
            tool_choice={"type": "function", "function": {"name": "nope"}},
            stream=stream,
        )
    assert "tool_choice" in str(caught.value)


# --------------------------------------------------------------------------- structured output


@pytest.mark.parametrize("project", PROFILES)
async def test_parse_with_a_pydantic_model(api: Api, project: str) -> None:
    completion = await api(project).chat.completions.parse(
        model="default", messages=MESSAGES, response_format=Movie
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    movie = choice.message.parsed
    assert isinstance(movie, Movie)
    assert movie.year >= 1900
    assert movie.director == Director(name="demo", born=0)
    assert movie.genres == ["drama"]


async def test_parse_streamed_with_a_pydantic_model(api: Api) -> None:
    async with api("alpha").chat.completions.stream(
        model="default", messages=MESSAGES, response_format=Movie
    ) as stream:
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Movie)


async def test_json_object_mode(api: Api) -> None:
    completion = await api("alpha").chat.completions.create(
        model="default", messages=MESSAGES, response_format={"type": "json_object"}
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content)["answer"].startswith("Hello from the karta demo provider.")


async def test_parse_cut_by_the_ceiling_raises_length(api: Api) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        await api("alpha").chat.completions.parse(
            model="default", messages=MESSAGES, response_format=Movie, max_completion_tokens=4
        )


# --------------------------------------------------------------------------- n and stop


@pytest.mark.parametrize("project", PROFILES)
async def test_n_choices_unary_each_within_max_tokens(api: Api, project: str) -> None:
    completion = await api(project).chat.completions.create(
        model="default", messages=MESSAGES, n=2, max_tokens=8
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]
    assert [c.message.content for c in completion.choices] == [
        "Hello from the karta demo provider (choice 1 ",
        "Hello from the karta demo provider (choice 2 ",
    ]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16


async def test_n_choices_streamed(api: Api) -> None:
    stream = await api("alpha").chat.completions.create(
        model="default",
        messages=MESSAGES,
        n=2,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert finishes == {0: "stop", 1: "stop"}
    assert texts[0].endswith("You said: What is the weather in Paris?")
    assert texts[1].startswith("Hello from the karta demo provider (choice 2 of 2).")
    assert usage is not None
    assert usage.completion_tokens == len(texts[0].split()) + len(texts[1].split())


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_stop(api: Api, stream: bool) -> None:
    sdk = api("beta")
    if stream:
        chunks = await sdk.chat.completions.create(
            model="default", messages=MESSAGES, stop=["streaming", "offline"], stream=True
        )
        text, finish = "", None
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    else:
        completion = await sdk.chat.completions.create(
            model="default", messages=MESSAGES, stop=["streaming", "offline"]
        )
        text = completion.choices[0].message.content or ""
        finish = completion.choices[0].finish_reason
    assert text == "Hello from the karta demo provider. This answer is generated "
    assert finish == "stop"


async def test_the_output_ceiling_is_honoured(api: Api) -> None:
    cut = await api("alpha").chat.completions.create(
        model="default", messages=MESSAGES, max_completion_tokens=3
    )
    assert cut.choices[0].message.content == "Hello from the "
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 3
