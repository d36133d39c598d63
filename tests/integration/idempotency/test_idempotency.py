"""Idempotency-Key on chat completions: a retry is answered once, billed once.

Real Redis, the fake upstream over TCP; the race runs across two ``gateway serve``
processes on one Redis.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from gateway.config import load_config
from tests.support.harness import GatewayFactory, bearer, chat_body, write_config
from tests.support.process import GatewayProcess
from tests.support.redis import settled
from tests.support.upstream import FakeUpstream, Recorded, Reply, default_reply, openai_stream

URL = "/v1/projects/alpha/chat/completions"


def keyed(key: str, token: str) -> dict[str, str]:
    return {**bearer(token), "Idempotency-Key": key}


async def test_concurrent_retries_across_two_gateways_reach_the_upstream_once(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, redis: Redis
) -> None:
    """Ten identical requests with one key, spread over two gateway processes, while
    the first is in flight: exactly one reaches the upstream and is billed, the others
    get 409; a retry after it completed is its answer replayed, not billed again."""
    creds = write_config(tmp_path / "cfg", upstream.base_url, redis_url)
    config = load_config(creds.config_dir, creds.env)

    def slow(rec: Recorded) -> Reply:
        reply = default_reply(rec)
        reply.delay_before_headers = 1.0
        return reply

    upstream.default = slow
    gateways = [GatewayProcess(creds, tmp_path / f"gw{i}.log") for i in range(2)]
    try:
        await asyncio.gather(*(g.start(timeout=30) for g in gateways))
        body = chat_body("Only once, please")
        async with aiohttp.ClientSession() as http:

            async def ask(i: int) -> tuple[int, dict[str, Any], dict[str, str]]:
                url = gateways[i % 2].url(URL)
                async with http.post(url, json=body, headers=keyed("k-1", creds.key)) as resp:
                    return resp.status, await resp.json(), dict(resp.headers)

            results = await asyncio.gather(*(ask(i) for i in range(10)))
            statuses = sorted(status for status, _, _ in results)
            assert statuses == [200] + [409] * 9, statuses
            assert len(upstream.requests) == 1
            for status, answer, _ in results:
                if status == 409:
                    assert "in flight" in answer["detail"]
            (first,) = [answer for status, answer, _ in results if status == 200]
            billed = await settled(redis, config)
            assert billed["u2"] > 0
            for i in range(2):  # replayed by either gateway
                status, answer, headers = await ask(i)
                assert status == 200
                assert answer == first
                assert headers["Idempotent-Replayed"] == "true"
        assert len(upstream.requests) == 1
        assert await settled(redis, config) == billed
    finally:
        for g in gateways:
            g.kill()


async def test_another_body_with_the_same_key_is_a_422(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway()
    resp = await client.post(URL, json=chat_body("a"), headers=keyed("k-2", creds.key))
    assert resp.status == 200
    resp = await client.post(URL, json=chat_body("b"), headers=keyed("k-2", creds.key))
    assert resp.status == 422
    refused = await resp.json()
    assert refused["param"] == "Idempotency-Key"
    assert "another request body" in refused["message"]
    assert len(upstream.requests) == 1


async def test_a_failed_request_releases_its_key(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """An upstream failure is not an answer to replay: the retry runs."""
    client, _, creds = await make_gateway()
    upstream.script(Reply(status=500, json={"error": {"message": "boom"}}))
    resp = await client.post(URL, json=chat_body(), headers=keyed("k-3", creds.key))
    assert resp.status == 502
    resp = await client.post(URL, json=chat_body(), headers=keyed("k-3", creds.key))
    assert resp.status == 200
    assert "Idempotent-Replayed" not in resp.headers
    assert len(upstream.requests) == 2


async def test_a_refused_request_releases_its_key(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """402 before anything was spent: the key is free for the retry that fits."""
    client, _, creds = await make_gateway(
        projects={"alpha": {"budgets": {"project": {"day": {"total_tokens": 100}}}}}
    )
    resp = await client.post(URL, json=chat_body(max_tokens=500), headers=keyed("k-4", creds.key))
    assert resp.status == 402
    resp = await client.post(URL, json=chat_body(max_tokens=500), headers=keyed("k-4", creds.key))
    assert resp.status == 402  # not a 409: nothing holds the key
    assert not upstream.requests


async def test_a_completed_stream_is_a_409_and_a_cut_one_runs_again(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway()
    body = chat_body(stream=True)
    upstream.script(Reply(sse=openai_stream(["Hello", " there"])))
    resp = await client.post(URL, json=body, headers=keyed("k-5", creds.key))
    assert resp.status == 200
    assert "[DONE]" in await resp.text()
    resp = await client.post(URL, json=body, headers=keyed("k-5", creds.key))
    assert resp.status == 409
    assert "streams are not replayed" in (await resp.json())["detail"]
    # Cut by the upstream before its end: the retry with the same key runs.
    sse = openai_stream(["a"] * 50)
    upstream.script(Reply(sse=sse, cut_after_bytes=len(sse) // 2))
    resp = await client.post(URL, json=body, headers=keyed("k-6", creds.key))
    assert "event: error" in await resp.text()
    upstream.script(Reply(sse=openai_stream(["again"])))
    resp = await client.post(URL, json=body, headers=keyed("k-6", creds.key))
    assert resp.status == 200
    assert "again" in await resp.text()


async def test_keys_are_scoped_per_credential(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """The same key from a session token (another credential) is another request."""
    client, _, creds = await make_gateway()
    resp = await client.post(URL, json=chat_body(), headers=keyed("k-7", creds.key))
    assert resp.status == 200
    minted = await client.post(
        "/v1/projects/alpha/session-tokens", json={"sub": "u1"}, headers=bearer(creds.key)
    )
    token = (await minted.json())["token"]
    resp = await client.post(URL, json=chat_body(), headers=keyed("k-7", token))
    assert resp.status == 200
    assert "Idempotent-Replayed" not in resp.headers
    assert len(upstream.requests) == 2


async def test_a_malformed_key_is_a_422(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway()
    for key in ("has space", "x" * 256, "é"):
        resp = await client.post(URL, json=chat_body(), headers=keyed(key, creds.key))
        assert resp.status == 422, key
        assert (await resp.json())["param"] == "Idempotency-Key"
    assert not upstream.requests
