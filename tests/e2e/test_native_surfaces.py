"""Same-format routes pass through natively: Messages to an Anthropic provider, Responses
to an OpenAI provider with a Responses API. Only the model and the clamped ceiling are
rewritten (provider features survive), the answer is relayed in its own format, and the
one meter bills what the upstream reported. The official SDKs as clients; the scripted
upstream serves recorded Anthropic and OpenAI streams (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from redis.asyncio import Redis

from gateway.config import Config
from tests.support.harness import bearer
from tests.support.redis import wait_released, window_ids
from tests.support.upstream import FakeUpstream, Reply, anthropic_message, anthropic_stream

DATA = Path(__file__).parent.parent / "data"
TIMEOUTS = {"connect": 2, "first_byte": 2, "idle": 2, "total": 10}


def routed(kind: str, **provider: Any) -> dict[str, Any]:
    entry = {
        "kind": kind,
        "base_url": "UPSTREAM",
        "api_key_env": "TEST_PROVIDER_KEY",
        "timeouts": TIMEOUTS,
        **provider,
    }
    return {"providers": {"native": entry}}


async def make(make_gateway: Any, upstream: FakeUpstream, kind: str, **provider: Any) -> Any:
    gateway = routed(kind, **provider)
    gateway["providers"]["native"]["base_url"] = upstream.base_url
    gateway["prices"] = {
        "claude-haiku-4-5": {"input": "1.00", "output": "5.00", "cache_write": "1.25",
                             "cache_write_1h": "2.00", "cached_input": "0.10",
                             "context_tokens": 200000},
        "gpt-5.6-sol": {"input": "1.00", "output": "4.00", "context_tokens": 400000},
    }  # fmt: skip
    model = "claude-haiku-4-5" if kind == "anthropic" else "gpt-5.6-sol"
    projects = {
        "alpha": {"models": {"default": {"routes": [{"provider": "native", "model": model}]}}}
    }
    return await make_gateway(projects=projects, gateway=gateway)


async def used(redis: Redis, config: Config) -> dict[str, int]:
    prefix = config.gateway.redis.key_prefix
    key = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['lifetime']}"
    return await wait_released(redis, key)


# ------------------------------------------------------------------- Messages, natively


async def test_messages_pass_through_with_their_features(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make(make_gateway, upstream, "anthropic")
    upstream.script(
        Reply(json=anthropic_message("Hi.", input_tokens=20, output_tokens=4,
                                     cache_read_input_tokens=100))
    )  # fmt: skip
    api = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        message = await api.messages.create(
            model="default",
            max_tokens=500,  # over the project's ceiling (100): clamped
            extra_body={"top_k": 5},
            system=[
                {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}
            ],
            messages=[{"role": "user", "content": "Hello"}],
            extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
        )
    finally:
        await api.close()
    assert message.content[0].text == "Hi."  # type: ignore[union-attr]
    assert message.model == "default"
    assert message.id.startswith("msg_")
    assert message.id != "msg_fake0001"
    sent = upstream.last
    body = sent.json()
    assert sent.path.endswith("/messages")
    assert body["model"] == "claude-haiku-4-5"
    assert body["max_tokens"] == 100
    assert body["top_k"] == 5
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.headers["anthropic-beta"] == "context-1m-2025-08-07"
    state = await used(redis, config)
    assert (state["u0"], state["u1"]) == (120, 4)  # 20 + the 100 cache reads, 4


async def test_messages_stream_natively_and_bill_the_reported_usage(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make(make_gateway, upstream, "anthropic")
    upstream.script(Reply(sse=anthropic_stream(["Hel", "lo"], input_tokens=9, output_tokens=2)))
    api = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        async with api.messages.stream(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    finally:
        await api.close()
    assert text == "Hello"
    assert final.model == "default"
    assert final.usage.output_tokens == 2
    assert upstream.last.json()["stream"] is True
    state = await used(redis, config)
    assert (state["u0"], state["u1"]) == (9, 2)


async def test_a_recorded_thinking_and_tool_use_stream_is_relayed_whole(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make(make_gateway, upstream, "anthropic")
    raw = (DATA / "anthropic_messages_thinking_tool_use_stream.sse").read_bytes()
    upstream.script(Reply(sse=raw, slice_size=61))
    api = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        async with api.messages.stream(
            model="default", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            final = await stream.get_final_message()
    finally:
        await api.close()
    kinds = [block.type for block in final.content]
    assert "thinking" in kinds
    assert "tool_use" in kinds
    thinking = next(b for b in final.content if b.type == "thinking")
    assert thinking.type == "thinking"
    assert thinking.signature  # the signature survives
    state = await used(redis, config)
    assert state["u1"] == final.usage.output_tokens
    assert state["r2"] == 0


async def test_a_beta_is_refused_when_a_target_is_translated(
    make_gateway: Any, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway()  # alpha routes to an OpenAI-compatible server
    resp = await client.post(
        "/v1/projects/alpha/v1/messages",
        json={"model": "default", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]},
        headers={**bearer(creds.key), "anthropic-beta": "context-1m-2025-08-07"},
    )
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "anthropic-beta" in body["error"]["message"]
    assert not upstream.requests


# ------------------------------------------------------------------ Responses, natively


async def test_responses_stream_natively_from_a_recording(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make(
        make_gateway, upstream, "openai", responses_path="/responses"
    )
    raw = (DATA / "openai_responses_text_stream.sse").read_bytes()
    upstream.script(Reply(sse=raw, slice_size=53))
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        async with api.responses.stream(model="default", input="Capital of France?") as stream:
            final = await stream.get_final_response()
    finally:
        await api.close()
    assert final.model == "default"
    assert final.usage is not None
    sent = upstream.last
    assert sent.path.endswith("/responses")
    assert sent.json()["model"] == "gpt-5.6-sol"
    assert sent.json()["max_output_tokens"] == 100
    state = await used(redis, config)
    assert (state["u0"], state["u1"]) == (final.usage.input_tokens, final.usage.output_tokens)


async def test_responses_unary_natively_with_previous_response_id_passed_on(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    """previous_response_id goes to OpenAI (which keeps the conversation); the hold
    bounds the replay by the model's context window."""
    client, config, creds = await make(
        make_gateway, upstream, "openai", responses_path="/responses"
    )
    recorded = json.loads((DATA / "openai_response_cached_unary.json").read_text())
    upstream.script(Reply(json=recorded))
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        response = await api.responses.create(
            model="default", input="And then?", previous_response_id="resp_upstream_1"
        )
    finally:
        await api.close()
    assert response.model == "default"
    assert upstream.last.json()["previous_response_id"] == "resp_upstream_1"
    state = await used(redis, config)
    assert (state["u0"], state["u1"]) == (4020, 5)


async def test_native_continuations_need_a_context_window(
    make_gateway: Any, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"providers": {"upstream": {
            "kind": "openai", "base_url": upstream.base_url, "api_key_env": "TEST_PROVIDER_KEY",
            "timeouts": TIMEOUTS, "responses_path": "/responses"}}}
    )  # fmt: skip
    resp = await client.post(
        "/v1/projects/alpha/responses",
        json={"input": "x", "previous_response_id": "resp_1"},
        headers=bearer(creds.key),
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["param"] == "previous_response_id"
    assert not upstream.requests


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_native_upstream_error_mid_stream_is_the_gateway_s_error_event(
    make_gateway: Any, upstream: FakeUpstream, kind: str
) -> None:
    if kind == "anthropic":
        client, _, creds = await make(make_gateway, upstream, "anthropic")
        sse = anthropic_stream(["a"] * 40)
        path, body = "v1/messages", {"model": "default", "max_tokens": 20, "stream": True,
                                     "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    else:
        client, _, creds = await make(make_gateway, upstream, "openai", responses_path="/responses")
        sse = (DATA / "openai_responses_text_stream.sse").read_bytes()
        path, body = "responses", {"input": "x", "stream": True}
    upstream.script(Reply(sse=sse, cut_after_bytes=len(sse) * 2 // 3))
    resp = await client.post(f"/v1/projects/alpha/{path}", json=body, headers=bearer(creds.key))
    assert resp.status == 200
    text = await resp.text()
    assert "event: error" in text
    assert creds.key not in text


async def test_count_tokens_is_forwarded_to_an_anthropic_route(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    """Anthropic counts with its own tokenizer: the gateway forwards the call (never
    billed) instead of answering its upper bound."""
    client, config, creds = await make(make_gateway, upstream, "anthropic")
    upstream.script(Reply(json={"input_tokens": 42}))
    api = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    try:
        counted = await api.messages.count_tokens(
            model="default", messages=[{"role": "user", "content": "Hello"}]
        )
    finally:
        await api.close()
    assert counted.input_tokens == 42
    sent = upstream.last
    assert sent.path.endswith("/messages/count_tokens")
    assert sent.json()["model"] == "claude-haiku-4-5"
    assert sent.headers["x-api-key"] != creds.key
    assert (await used(redis, config)).get("u2", 0) == 0
