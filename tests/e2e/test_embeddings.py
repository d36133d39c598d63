"""Embeddings through the official openai SDK: an embedding alias routed to the scripted
OpenAI-compatible upstream (and to the offline demo provider), an input-only budget
settled with the reported prompt tokens."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.config import Config
from tests.support.harness import bearer, chat_body
from tests.support.metrics import metric
from tests.support.redis import wait_released, window_ids
from tests.support.upstream import FakeUpstream, Reply

Gateway = tuple[TestClient[Any, Any], Config, Any]
CHAT_ROUTE = {"provider": "upstream", "model": "gpt-4o-mini"}


def models(**extra: Any) -> dict[str, Any]:
    return {
        "alpha": {
            "models": {
                "default": {"routes": [CHAT_ROUTE]},
                "embed": {
                    "kind": "embedding",
                    "routes": [{"provider": "upstream", "model": "text-embedding-3-small"}],
                },
                "offline": {
                    "kind": "embedding",
                    "routes": [{"provider": "demo", "model": "demo-embed-1"}],
                },
            },
            **extra,
        }
    }


PRICES = {"prices": {"text-embedding-3-small": {"input": "0.02", "output": "0"},
                     "demo-embed-1": {"input": "0.01", "output": "0"}}}  # fmt: skip


def embeddings_answer(vectors: list[list[float]], prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode(),
            }
            for i, v in enumerate(vectors)
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


async def lifetime(redis: Redis, config: Config) -> dict[str, int]:
    prefix = config.gateway.redis.key_prefix
    key = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['lifetime']}"
    return await wait_released(redis, key)


@pytest.fixture
async def gw(make_gateway: Any) -> Gateway:
    client, config, creds = await make_gateway(projects=models(), gateway=PRICES)
    return client, config, creds


@pytest.fixture
async def oai(gw: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    client, _, creds = gw
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    yield api
    await api.close()


async def test_the_sdk_embeds_and_the_project_is_billed_the_reported_tokens(
    gw: Gateway, oai: openai.AsyncOpenAI, upstream: FakeUpstream, redis: Redis
) -> None:
    _, config, _ = gw
    upstream.script(Reply(json=embeddings_answer([[0.5, -0.5], [1.0, 0.0]], prompt_tokens=7)))
    result = await oai.embeddings.create(model="embed", input=["hello", "world"])
    assert [d.embedding for d in result.data] == [[0.5, -0.5], [1.0, 0.0]]
    assert result.model == "embed"
    assert result.usage.prompt_tokens == 7
    sent = upstream.last
    assert sent.path.endswith("/embeddings")
    assert sent.json()["model"] == "text-embedding-3-small"
    assert sent.json()["input"] == ["hello", "world"]
    state = await lifetime(redis, config)
    assert (state["u0"], state["u1"]) == (7, 0)
    assert state["u3"] == 7 * 20  # 0.02 USD per million tokens: 20 nano-USD a token
    client, _, _ = gw
    counted = await metric(client, "gateway_requests_total", project="alpha", surface="embeddings")
    assert counted == 1


async def test_an_answer_without_usage_is_billed_the_input_bound(
    gw: Gateway, oai: openai.AsyncOpenAI, upstream: FakeUpstream, redis: Redis
) -> None:
    _, config, _ = gw
    answer = embeddings_answer([[0.1]], prompt_tokens=1)
    del answer["usage"]
    upstream.script(Reply(json=answer))
    await oai.embeddings.create(model="embed", input="hello")
    state = await lifetime(redis, config)
    assert (state["u0"], state["u1"]) == (len("hello") + 2, 0)  # bytes + the item allowance


async def test_the_demo_provider_answers_deterministic_vectors(oai: openai.AsyncOpenAI) -> None:
    first = await oai.embeddings.create(model="offline", input="same text", dimensions=8)
    second = await oai.embeddings.create(model="offline", input="same text", dimensions=8)
    assert len(first.data[0].embedding) == 8
    assert first.data[0].embedding == pytest.approx(second.data[0].embedding)


async def test_chat_and_embedding_aliases_are_not_interchangeable(
    gw: Gateway, oai: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    client, _, creds = gw
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await oai.embeddings.create(model="default", input="x")
    assert "chat model" in str(refused.value.response.json())
    resp = await client.post(
        "/v1/projects/alpha/chat/completions",
        json=chat_body(model="embed"),
        headers=bearer(creds.key),
    )
    assert resp.status == 422
    assert (await resp.json())["param"] == "model"
    assert not upstream.requests


async def test_an_input_over_the_cap_is_a_402_before_anything_is_sent(
    make_gateway: Any, upstream: FakeUpstream
) -> None:
    budgets = {"budgets": {"project": {"day": {"input_tokens": 10}}}}
    client, _, creds = await make_gateway(projects=models(**budgets), gateway=PRICES)
    resp = await client.post(
        "/v1/projects/alpha/embeddings",
        json={"model": "embed", "input": "x" * 50},
        headers=bearer(creds.key),
    )
    assert resp.status == 402, await resp.text()
    body = await resp.json()
    assert (body["dimension"], body["requested"]) == ("input_tokens", 52)
    assert not upstream.requests


async def test_unknown_fields_and_bad_inputs_name_themselves(
    gw: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gw
    for body, param in (
        ({"model": "embed", "input": "x", "truncate": "END"}, "truncate"),
        ({"model": "embed", "input": ["ok", 3]}, "input[1]"),
    ):
        resp = await client.post(
            "/v1/projects/alpha/embeddings", json=body, headers=bearer(creds.key)
        )
        assert resp.status == 422
        assert (await resp.json())["param"] == param
    assert not upstream.requests
