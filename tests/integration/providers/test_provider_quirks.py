"""OpenAI-compatible upstreams that differ from OpenAI: configured quirks (Azure-style
paths, query and auth header; the max tokens parameter name) and stream shapes of
other servers (Groq's usage on the finish chunk, trailing non-usage chunks, no usage
at all, non-standard delta fields). Real fake upstream over TCP, real Redis.

``chat_body("Hello")`` has an input bound of 33 tokens; the harness projects cap
output at 100 tokens; gpt-4o-mini costs 150 / 600 nano-USD per input / output token.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.support.billing import cost, used
from tests.support.harness import PROVIDER_KEY, GatewayFactory, bearer, chat_body, provider_entry
from tests.support.metrics import metric
from tests.support.redis import month_counter
from tests.support.sse import data_frames
from tests.support.upstream import FakeUpstream, Reply, chunk, openai_completion, openai_stream, sse

URL = "/v1/projects/alpha/chat/completions"
INPUT_BOUND, CEILING = 33, 100
AZURE_PATH = "/openai/deployments/{model}/chat/completions"
API_VERSION = "2024-10-21"


def chunk_frames(frames: list[Any]) -> list[dict[str, Any]]:
    assert frames[-1] == "[DONE]"
    assert all(isinstance(f, dict) for f in frames[:-1])
    return frames[:-1]


def has_key(value: Any, key: str) -> bool:
    """Whether ``key`` appears at any depth of a JSON value."""
    if isinstance(value, dict):
        return key in value or any(has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(has_key(v, key) for v in value)
    return False


def quirky_provider(base_url: str, **quirks: Any) -> dict[str, Any]:
    return {"providers": {"upstream": {**provider_entry(base_url), **quirks}}}


# ----------------------------------------------------------------------------- Azure-style


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_style_path_query_and_api_key_header(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, stream: bool
) -> None:
    # The fake answers on any path; Azure's base URL has no /v1 prefix.
    client, config, creds = await make_gateway(
        gateway=quirky_provider(
            upstream.origin,
            chat_path=AZURE_PATH,
            query={"api-version": API_VERSION},
            auth_header="api-key",
            auth_scheme="",
            headers={"X-Deployment-Tag": "blue"},
        )
    )
    resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    await resp.read()
    assert len(upstream.requests) == 1
    rec = upstream.last
    assert rec.method == "POST"
    assert rec.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert rec.query == {"api-version": API_VERSION}
    assert rec.header("api-key") == PROVIDER_KEY
    assert rec.header("Authorization") is None
    assert rec.header("X-Deployment-Tag") == "blue"
    # The client's own credential never travels upstream, under any header.
    assert not any(creds.key in v for v in rec.headers.values())
    assert rec.json()["model"] == "gpt-4o-mini"
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(11, 3, cost(11, 3))


async def test_the_route_model_is_escaped_into_the_path(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={
            **quirky_provider(
                upstream.origin,
                chat_path=AZURE_PATH,
                query={"api-version": API_VERSION},
                auth_header="api-key",
                auth_scheme="",
            ),
            "prices": {"prod deploy#1": {"input": "0.15", "output": "0.60"}},
        },
        projects={
            "alpha": {
                "models": {
                    "default": {"routes": [{"provider": "upstream", "model": "prod deploy#1"}]}
                }
            }
        },
    )
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    # The deployment name stays one path segment: not split at "#", not a fragment.
    assert upstream.last.path == "/openai/deployments/prod deploy#1/chat/completions"
    assert upstream.last.query == {"api-version": API_VERSION}
    assert upstream.last.json()["model"] == "prod deploy#1"


async def test_a_custom_auth_scheme_prefixes_the_key(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway=quirky_provider(upstream.base_url, auth_header="X-Api-Key", auth_scheme="Token")
    )
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    assert upstream.last.path == "/v1/chat/completions"
    assert upstream.last.query == {}
    assert upstream.last.header("X-Api-Key") == f"Token {PROVIDER_KEY}"
    assert upstream.last.header("Authorization") is None


# ----------------------------------------------------------------------------- max_tokens_param


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_param_names_the_clamped_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream, stream: bool
) -> None:
    client, _, creds = await make_gateway(
        gateway=quirky_provider(upstream.base_url, max_tokens_param="max_tokens")
    )
    resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
    assert resp.status == 200
    await resp.read()
    sent = upstream.last.json()
    assert sent["max_tokens"] == CEILING  # the project's ceiling: the client sent none
    assert "max_completion_tokens" not in sent


async def test_default_max_tokens_param_is_max_completion_tokens(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway()
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    sent = upstream.last.json()
    assert sent["max_completion_tokens"] == CEILING
    assert "max_tokens" not in sent


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ({"max_tokens": 500}, {"max_tokens": CEILING}),
        ({"max_tokens": 40}, {"max_tokens": 40}),
        # The client's other name is not kept: a server reading only max_tokens (Ollama,
        # llama.cpp) ignored the clamp sent as max_completion_tokens, and generated past
        # the reserved ceiling.
        ({"max_completion_tokens": 500}, {"max_tokens": CEILING}),
        ({"max_completion_tokens": 40}, {"max_tokens": 40}),
    ],
)
async def test_the_clamp_goes_under_the_providers_name_whatever_the_client_used(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    asked: dict[str, Any],
    expected: dict[str, int],
) -> None:
    client, _, creds = await make_gateway(
        gateway=quirky_provider(upstream.base_url, max_tokens_param="max_tokens")
    )
    resp = await client.post(URL, json=chat_body(**asked), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    sent = upstream.last.json()
    assert {k: sent[k] for k in ("max_tokens", "max_completion_tokens") if k in sent} == expected


# ----------------------------------------------------------------------------- Groq usage


GROQ_USAGE = {
    "queue_time": 0.051,
    "prompt_tokens": 41,
    "prompt_time": 0.0021,
    "completion_tokens": 17,
    "completion_time": 0.034,
    "total_tokens": 58,
    "total_time": 0.036,
}


def groq_stream() -> bytes:
    """Groq: no separate usage chunk; usage on the finish chunk, top level and in x_groq."""
    return sse(
        chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_01khrvt2r6e9", "seed": 7}),
        chunk({"content": "Hello"}),
        chunk({"content": " there"}),
        chunk(
            {},
            "stop",
            x_groq={"id": "req_01khrvt2r6e9", "usage": GROQ_USAGE},
            usage=GROQ_USAGE,
        ),
        done=True,
    )


async def test_groq_usage_on_the_finish_chunk_is_billed_and_reported_once(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(Reply(sse=groq_stream()))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    chunks = chunk_frames(data_frames(await resp.text()))
    with_usage = [c for c in chunks if "usage" in c]
    assert with_usage == [chunks[-1]]  # one usage chunk, the last one
    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == 41
    assert final["usage"]["completion_tokens"] == 17
    assert final["usage"]["total_tokens"] == 58
    # The finish chunk itself is still relayed (without the usage it carried).
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "Hello there"
    )
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(41, 17, cost(41, 17))
    assert await metric(client, "gateway_estimated_usage_total") == 0


async def test_groq_usage_not_asked_for_appears_nowhere(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(Reply(sse=groq_stream()))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    chunks = chunk_frames(data_frames(await resp.text()))
    leaked = [json.dumps(c) for c in chunks if has_key(c, "usage")]
    assert leaked == [], "usage relayed although the client did not ask for it"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(41, 17, cost(41, 17))
    assert await metric(client, "gateway_estimated_usage_total") == 0


# ----------------------------------------------------------------------------- trailing chunk


MODERATION = {"flagged": False, "categories": {"violence": False}, "model": "omni-moderation"}


def usage_then_moderation() -> bytes:
    usage = {"prompt_tokens": 25, "completion_tokens": 9, "total_tokens": 34}
    return sse(
        chunk({"role": "assistant", "content": ""}, usage=None),
        chunk({"content": "Hi!"}, usage=None),
        chunk({}, "stop", usage=None),
        chunk(choices=[], usage=usage),
        chunk(choices=[], usage=None, moderation=MODERATION),
        done=True,
    )


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_chunk_after_the_usage_chunk_is_relayed_not_taken_for_usage(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, include_usage: bool
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(Reply(sse=usage_then_moderation()))
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    resp = await client.post(URL, json=chat_body(stream=True, **extra), headers=bearer(creds.key))
    assert resp.status == 200
    chunks = chunk_frames(data_frames(await resp.text()))
    moderation = [c for c in chunks if "moderation" in c]
    assert len(moderation) == 1
    assert moderation[0]["moderation"] == MODERATION
    assert moderation[0]["choices"] == []
    assert "usage" not in moderation[0]
    with_usage = [c for c in chunks if has_key(c, "usage")]
    if include_usage:
        assert with_usage == [chunks[-1]]
        assert chunks.index(moderation[0]) < len(chunks) - 1
        assert chunks[-1]["usage"]["prompt_tokens"] == 25
        assert chunks[-1]["usage"]["completion_tokens"] == 9
    else:
        assert with_usage == []
        assert chunks[-1] is moderation[0]
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(25, 9, cost(25, 9))
    assert await metric(client, "gateway_estimated_usage_total") == 0


# ----------------------------------------------------------------------------- no usage


async def test_a_server_that_never_reports_usage_is_billed_the_output_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """A server that ignores include_usage: what it generated unseen (reasoning) is
    unknown, so the output is billed at the reserved ceiling, never the visible text."""
    client, config, creds = await make_gateway()
    pieces = ["Bonjour", " tout", " le", " monde"]
    upstream.script(Reply(sse=openai_stream(pieces, include_usage=False)))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    chunks = chunk_frames(data_frames(await resp.text()))
    counter = await month_counter(redis, config.gateway.redis.key_prefix)
    assert counter == used(INPUT_BOUND, CEILING, cost(INPUT_BOUND, CEILING))
    # The client asked for usage: it gets the estimate that was billed.
    assert chunks[-1]["usage"]["completion_tokens"] == counter["u1"]
    assert chunks[-1]["usage"]["prompt_tokens"] == INPUT_BOUND
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="no_usage")
        == 1
    )


async def test_a_unary_answer_without_usage_is_billed_the_output_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    completion = openai_completion("Bonjour tout le monde")
    del completion["usage"]
    upstream.script(Reply(json=completion))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    body = await resp.json()
    counter = await month_counter(redis, config.gateway.redis.key_prefix)
    assert counter == used(INPUT_BOUND, CEILING, cost(INPUT_BOUND, CEILING))
    assert body["usage"]["completion_tokens"] == CEILING
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="no_usage")
        == 1
    )


# ----------------------------------------------------------------------------- passthrough


async def test_a_null_error_member_on_every_chunk_is_no_error(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """Some OpenAI-compatible servers send ``"error": null`` on each chunk: that is a
    normal chunk, relayed as sent, not a failure."""
    client, _, creds = await make_gateway()
    sent = [
        chunk({"role": "assistant", "content": "Hi"}, error=None),
        chunk({}, "stop", error=None),
        chunk(
            choices=[],
            error=None,
            usage={"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32},
        ),
    ]
    upstream.script(Reply(sse=sse(*sent, done=True)))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    chunks = chunk_frames(data_frames(await resp.text()))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "Hi"},
        {},
    ]
    assert all(c["error"] is None for c in chunks)


async def test_non_standard_fields_pass_through_untouched(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    sent = [
        chunk(
            {"role": "assistant", "content": ""},
            x_groq={"id": "req_01khrvt2r6e9", "seed": 27718886},
        ),
        chunk({"reasoning": "We", "channel": "analysis"}),
        chunk({"reasoning": " need", "channel": "analysis"}),
        chunk({"content": "Answer", "channel": "final", "annotations": [{"type": "x"}]}),
        chunk({}, "stop", x_groq={"id": "req_01khrvt2r6e9"}),
        chunk(choices=[], usage={"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}),
    ]
    upstream.script(Reply(sse=sse(*sent, done=True)))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    chunks = chunk_frames(data_frames(await resp.text()))
    assert len(chunks) == 5  # the usage chunk is not relayed: the client did not ask
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    assert ids.pop().startswith("chatcmpl_")
    for got, up in zip(chunks, sent[:5], strict=True):
        # Only the identity is re-stamped; every other field, standard or not, is as sent.
        assert got == {**up, "id": got["id"], "model": "default"}
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(30, 12, cost(30, 12))
