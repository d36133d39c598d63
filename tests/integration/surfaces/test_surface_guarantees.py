"""The budget guarantees of chat, on every spending surface (one parametrised suite):
a burst cannot pass the cap, a client that leaves mid-stream is billed the worst case,
and a gateway killed with streams in flight has them charged at their worst case once
their holds expire. Real Redis, the scripted upstream over TCP, real gateway processes
for the crash.

Every surface asks "Hello" with 50 output tokens: its chat body has an input bound of
16 + 8 + len("user") + len("Hello") = 33 tokens, so its worst case is 83 (embeddings:
5 bytes + 2 = 7, output 0).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.config import load_config
from tests.support.harness import bearer, write_config
from tests.support.process import GatewayProcess
from tests.support.redis import counter, wait_released, window_ids
from tests.support.upstream import FakeUpstream, Recorded, Reply, default_reply, openai_stream

# Run alone (scripts/test's serial pass): SIGKILL and hold-expiry timing.
pytestmark = pytest.mark.serial

OUTPUT = 50
CHAT_WORST = 33 + OUTPUT


@dataclass(frozen=True)
class Surface:
    name: str
    path: str
    worst: int
    streams: bool

    def body(self, stream: bool = False) -> dict[str, Any]:
        hello = [{"role": "user", "content": "Hello"}]
        if self.name == "chat":
            return {"messages": hello, "max_tokens": OUTPUT, "stream": stream}
        if self.name == "responses":
            return {"input": "Hello", "max_output_tokens": OUTPUT, "stream": stream}
        if self.name == "messages":
            return {"model": "default", "max_tokens": OUTPUT, "messages": hello, "stream": stream}
        return {"model": "embed", "input": "Hello"}


SURFACES = [
    Surface("chat", "chat/completions", CHAT_WORST, True),
    Surface("responses", "responses", CHAT_WORST, True),
    Surface("messages", "v1/messages", CHAT_WORST, True),
    Surface("embeddings", "embeddings", 7, False),
]
STREAMING = [s for s in SURFACES if s.streams]
EMBED = {"kind": "embedding", "routes": [{"provider": "upstream", "model": "embed-up"}]}
PRICES = {"embed-up": {"input": "0.02", "output": "0"}}


def project(cap: int) -> dict[str, Any]:
    return {
        "alpha": {
            "models": {
                "default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]},
                "embed": EMBED,
            },
            "budgets": {"project": {"month": {"total_tokens": cap}}},
        }
    }


def embeddings_reply() -> Reply:
    return Reply(
        json={
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": "embed-up",
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    )


def slow(rec: Recorded) -> Reply:
    """Every answer takes a second to start: requests of a burst overlap."""
    reply = embeddings_reply() if rec.path.endswith("/embeddings") else default_reply(rec)
    reply.delay_before_headers = 1.0
    return reply


def url(surface: Surface) -> str:
    return f"/v1/projects/alpha/{surface.path}"


async def lifetime(redis: Redis, prefix: str) -> dict[str, int]:
    key = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['lifetime']}"
    return await wait_released(redis, key, timeout=10)


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
async def test_a_burst_cannot_pass_the_cap(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis, surface: Surface
) -> None:
    """Ten at once against a cap with room for three and a half worst cases: exactly
    three reach the upstream, the others are refused before anything is sent."""
    cap = 3 * surface.worst + surface.worst // 2
    client, config, creds = await make_gateway(projects=project(cap), gateway={"prices": PRICES})
    upstream.default = slow
    results = await asyncio.gather(
        *(
            client.post(url(surface), json=surface.body(), headers=bearer(creds.key))
            for _ in range(10)
        )
    )
    statuses = sorted(r.status for r in results)
    assert statuses == [200] * 3 + [402] * 7, statuses
    assert len(upstream.requests) == 3
    state = await lifetime(redis, config.gateway.redis.key_prefix)
    assert 0 < state["u2"] <= cap
    assert state["r2"] == 0


@pytest.mark.parametrize("surface", STREAMING, ids=lambda s: s.name)
async def test_a_client_gone_mid_stream_is_billed_the_worst_case(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis, surface: Surface
) -> None:
    client, config, creds = await make_gateway(projects=project(10_000), gateway={"prices": PRICES})
    words = [f"w{i} " for i in range(100)]
    upstream.script(Reply(sse=openai_stream(words), slice_size=40, delay_between_slices=0.05))
    async with client.post(
        url(surface), json=surface.body(stream=True), headers=bearer(creds.key)
    ) as resp:
        assert resp.status == 200
        seen = b""
        while b"w3" not in seen:
            seen += await resp.content.readany()
    await upstream.wait_disconnect()
    state = await lifetime(redis, config.gateway.redis.key_prefix)
    assert (state["u0"], state["u1"], state["r2"]) == (33, OUTPUT, 0)


TTL = 8  # the shortest hold the providers' timeouts below allow (2 + 1 + 5 s)


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
async def test_a_killed_gateways_requests_are_charged_their_worst_case(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, redis: Redis, surface: Surface
) -> None:
    """Five requests in flight on a gateway killed with SIGKILL: once their holds
    expired, a second gateway's next request charges them at their worst case."""
    in_flight = 5
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        projects=project(10_000),
        gateway={
            "limits": {"reservation_ttl_seconds": TTL},
            "prices": PRICES,
            "providers": {
                "upstream": {
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key_env": "TEST_PROVIDER_KEY",
                    "timeouts": {"connect": 2, "first_byte": 2, "idle": 1, "total": 2},
                }
            },
        },
    )
    prefix = load_config(creds.config_dir, creds.env).gateway.redis.key_prefix

    def hanging(rec: Recorded) -> Reply:
        if rec.path.endswith("/embeddings"):
            reply = embeddings_reply()
            reply.delay_before_headers = 1.5  # past the kill, within the total timeout
            return reply
        sse = openai_stream([f"w{i} " for i in range(100)])
        return Reply(sse=sse, slice_size=40, delay_between_slices=0.05)

    upstream.default = hanging
    victim = GatewayProcess(creds, tmp_path / "victim.log")
    survivor = GatewayProcess(creds, tmp_path / "survivor.log")
    try:
        await asyncio.gather(victim.start(timeout=30), survivor.start(timeout=30))
        month = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['month']}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def ask() -> None:
                try:
                    async with http.post(
                        victim.url(url(surface)),
                        json=surface.body(stream=surface.streams),
                        headers=bearer(creds.key),
                    ) as resp:
                        await resp.read()
                except (aiohttp.ClientError, asyncio.IncompleteReadError):
                    pass  # cut by the kill

            asking = [asyncio.create_task(ask()) for _ in range(in_flight)]
            deadline = time.monotonic() + 10
            while (await counter(redis, month)).get("r2", 0) < in_flight * surface.worst:
                assert time.monotonic() < deadline, "the requests were never held"
                await asyncio.sleep(0.05)
            held_at = time.monotonic()
            victim.kill()
            await asyncio.gather(*asking)
            await asyncio.sleep(max(0.0, held_at + TTL + 1.0 - time.monotonic()))
            async with http.get(
                survivor.url("/v1/projects/alpha/usage"), headers=bearer(creds.key)
            ) as resp:
                assert resp.status == 200
        state = await counter(redis, month)
        assert state["u2"] == in_flight * surface.worst
        assert state["r2"] == 0
    finally:
        victim.kill()
        survivor.kill()
