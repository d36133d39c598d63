"""End to end: the official OpenAI SDK (openai.AsyncOpenAI) against a running gateway.

The gateway is served on a real socket by pytest-aiohttp, with a real Redis and the
scripted fake upstream over TCP; the SDK talks to it exactly as an application would,
with ``base_url=http://host/v1/projects/<slug>`` and a key or session token as api_key.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.harness import UNAUTHORIZED, Gateway, GatewayFactory, SdkFactory
from tests.support.sdk import collect, text_of
from tests.support.upstream import FakeUpstream, Reply, fixture, openai_stream

PROFILES = [("alpha", "text_completion"), ("beta", "chat.completion")]
PROJECT_IDS = ["karta", "openai"]
MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of the UK?"}]


@pytest.mark.parametrize(("project", "unary_object"), PROFILES, ids=PROJECT_IDS)
async def test_unary_create(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str, unary_object: str
) -> None:
    client, _, creds = gateway
    api = sdk(client, creds.key, project)
    completion = await api.chat.completions.create(model="default", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "default"
    assert completion.object == unary_object
    assert completion.id.startswith("chatcmpl_")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 11
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 14
    # What went upstream: the route's model, the provider key, never the client's key.
    [sent] = upstream.requests
    assert sent.json()["model"] == "gpt-4o-mini"
    assert sent.json()["messages"] == MESSAGES
    assert sent.header("Authorization") == f"Bearer {creds.env['TEST_PROVIDER_KEY']}"
    assert creds.key not in sent.body.decode()


async def test_unary_other_alias(gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory) -> None:
    client, _, creds = gateway
    completion = await sdk(client, creds.key).chat.completions.create(
        model="smart", messages=MESSAGES, max_tokens=20
    )
    assert completion.model == "smart"
    assert upstream.last.json()["model"] == "gpt-4o"
    # Clamped and sent under the provider's name for it (the harness's default).
    assert upstream.last.json()["max_completion_tokens"] == 20
    assert "max_tokens" not in upstream.last.json()


# --------------------------------------------------------------------------- stream=True


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_stream_with_include_usage(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)
    assert text_of(chunks) == "Hello there"
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl_")
    assert {c.model for c in chunks} == {"default"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        11,
        3,
        14,
    )
    assert all(c.usage is None for c in chunks[:-1])
    assert upstream.last.json()["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_stream_without_include_usage_has_no_usage_chunk(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default", messages=MESSAGES, stream=True
    )
    chunks = await collect(stream)
    assert text_of(chunks) == "Hello there"
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    # The gateway still asked the upstream for usage, and kept it to itself.
    assert upstream.last.json()["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_stream_recorded_openai_fixture(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture("openai_chat_text_include_usage.sse")))
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)
    assert text_of(chunks) == "The capital of the UK is London."
    assert len(chunks) == 11
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (78, 9, 87)
    assert {c.model for c in chunks} == {"default"}  # never the provider's model name


# --------------------------------------------------------------------------- .stream() helper


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_stream_helper_final_completion(
    gateway: Gateway, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    api = sdk(client, creds.key, project)
    deltas: list[str] = []
    async with api.chat.completions.stream(
        model="default", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        async for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        final = await stream.get_final_completion()
    assert "".join(deltas) == "Hello there"
    assert final.choices[0].message.content == "Hello there"
    assert final.choices[0].finish_reason == "stop"
    assert final.model == "default"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (11, 3)
    assert final.usage.total_tokens == 14


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_stream_helper_recorded_tool_call(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture("openai_chat_tool_call_include_usage.sse")))
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_capital",
                # strict: openai-python's stream helper before 3.x auto-parses only strict
                # function tools (the declared floor is 1.97.2).
                "strict": True,
                "parameters": {
                    "type": "object",
                    "properties": {"country": {"type": "string"}},
                    "required": ["country"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    async with sdk(client, creds.key, project).chat.completions.stream(
        model="default",
        messages=MESSAGES,
        tools=tools,
        stream_options={"include_usage": True},
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == "call_ZR5UUuTt3pf61kjwAJIYdVMj"
    assert call.function.name == "get_capital"
    assert call.function.arguments == '{"country":"UK"}'
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (53, 15)
    assert final.usage.total_tokens == 68


# --------------------------------------------------------------------------- failures mid-stream


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_midstream_provider_error_event_raises_api_error(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture("openai_compat_groq_midstream_error_event.sse")))
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default", messages=MESSAGES, stream=True
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        await collect(stream, received)
    assert type(info.value) is openai.APIError
    # The provider's text is never relayed (it can quote the key): its code is.
    assert info.value.message == "the provider reported an error (tool_use_failed)"
    assert len(received) == 94  # everything before the failure was relayed


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_upstream_connection_cut_midstream_raises_api_error(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    body = openai_stream(["The", " capital", " of", " the", " UK", " is", " London."])
    first_two = body.index(b"\n\n", body.index(b"\n\n") + 2) + 2
    upstream.script(Reply(sse=body, cut_after_bytes=first_two + 40))
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        await collect(stream, received)
    assert type(info.value) is openai.APIError
    assert len(received) == 2  # the role chunk and "The" arrived whole before the cut
    assert text_of(received) == "The"
    assert all(c.usage is None for c in received)  # no usage chunk after a failure


@pytest.mark.parametrize("project", ["alpha", "beta"], ids=PROJECT_IDS)
async def test_upstream_stream_ending_early_raises_api_error(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, project: str
) -> None:
    client, _, creds = gateway
    body = openai_stream(["The", " capital", " of"])
    frames = body.split(b"\n\n")
    truncated = b"\n\n".join(frames[:3]) + b"\n\n"  # role chunk + 2 pieces, no finish, no [DONE]
    upstream.script(Reply(sse=truncated))
    stream = await sdk(client, creds.key, project).chat.completions.create(
        model="default", messages=MESSAGES, stream=True
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        await collect(stream, received)
    assert type(info.value) is openai.APIError
    assert text_of(received) == "The capital"


# --------------------------------------------------------------------------- HTTP errors


async def test_budget_exhausted_is_402(
    make_gateway: GatewayFactory, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = await make_gateway(
        projects={"alpha": {"budgets": {"project": {"day": {"total_tokens": 10}}}}}
    )
    api = sdk(client, creds.key)
    with pytest.raises(openai.APIStatusError) as info:
        await api.chat.completions.create(model="default", messages=MESSAGES)
    assert info.value.status_code == 402
    body = info.value.response.json()
    assert body["error"] == "budget_exhausted"
    assert body["reason"] == "daily total_tokens cap would be exceeded by this request"
    assert body["limit"] == 10
    assert body["used"] == 0
    assert body["resets_at"].endswith("T00:00:00Z")

    with pytest.raises(openai.APIStatusError) as info:
        await api.chat.completions.create(model="default", messages=MESSAGES, stream=True)
    assert info.value.status_code == 402
    assert upstream.requests == []  # refused before anything was sent upstream


async def test_session_token_as_api_key(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = gateway
    api = sdk(client, creds.session("alpha", sub="end-user-7"))
    completion = await api.chat.completions.create(model="default", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello there"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 14
    async with api.chat.completions.stream(
        model="default", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "Hello there"
    assert final.usage is not None
    assert final.usage.total_tokens == 14
    assert len(upstream.requests) == 2


async def test_session_token_for_another_project_is_403(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = gateway
    api = sdk(client, creds.session("beta"), "alpha")
    with pytest.raises(openai.PermissionDeniedError) as info:
        await api.chat.completions.create(model="default", messages=MESSAGES)
    assert info.value.status_code == 403
    assert upstream.requests == []


@pytest.mark.parametrize("bad", ["kt_live_" + "A" * 32, "not-a-token", "sk-proj-abc"])
async def test_bad_credential_is_401(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory, bad: str
) -> None:
    client, _, _ = gateway
    with pytest.raises(openai.AuthenticationError) as info:
        await sdk(client, bad).chat.completions.create(model="default", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.response.json() == UNAUTHORIZED
    assert upstream.requests == []


async def test_unknown_alias_is_404(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = gateway
    with pytest.raises(openai.NotFoundError) as info:
        await sdk(client, creds.key).chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert info.value.status_code == 404
    assert upstream.requests == []


async def test_validation_error_is_422(
    gateway: Gateway, upstream: FakeUpstream, sdk: SdkFactory
) -> None:
    client, _, creds = gateway
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await sdk(client, creds.key).chat.completions.create(
            model="default", messages=MESSAGES, temperature=3
        )
    assert info.value.response.json()["param"] == "temperature"
    assert upstream.requests == []
