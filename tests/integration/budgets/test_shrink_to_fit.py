"""Shrink instead of refuse (opt-in per project): a request whose worst case does not
fit is admitted with the output every cap has room for, in the same atomic reserve,
when that is at least min_output_tokens; else 402 as usual. Real Redis, the scripted
upstream over TCP.

chat_body("Hello"): input bound 33, the harness ceiling 100 (worst case 133 tokens);
gpt-4o-mini: 150 nano-USD an input token, 600 an output token.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from gateway.config import Config
from tests.support.harness import bearer, chat_body
from tests.support.redis import counter, wait_released, window_ids
from tests.support.upstream import FakeUpstream, Reply, openai_completion

URL = "/v1/projects/alpha/chat/completions"


def shrinking(day: dict[str, Any], min_output: int = 10) -> dict[str, Any]:
    return {
        "alpha": {
            "shrink_to_fit": {"min_output_tokens": min_output},
            "budgets": {"project": {"day": day}},
        }
    }


async def day_counter(redis: Redis, config: Config) -> dict[str, int]:
    prefix = config.gateway.redis.key_prefix
    key = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['day']}"
    return await wait_released(redis, key)


async def test_a_token_cap_shrinks_the_output_to_what_fits(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(projects=shrinking({"total_tokens": 100}))
    upstream.script(Reply(json=openai_completion(prompt_tokens=11, completion_tokens=5)))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Budget-Shrunk-Max-Tokens"] == "67"  # 100 - 33
    assert resp.headers["X-Budget-Remaining-Tokens"] == "0"
    assert upstream.last.json()["max_completion_tokens"] == 67
    state = await day_counter(redis, config)
    assert (state["u2"], state["r2"]) == (16, 0)


async def test_too_little_room_is_still_a_402(make_gateway: Any, upstream: FakeUpstream) -> None:
    client, _, creds = await make_gateway(projects=shrinking({"total_tokens": 40}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 402  # 7 output tokens would fit, under min_output_tokens 10
    assert not upstream.requests


async def test_a_cost_cap_shrinks_by_the_output_price(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    """0.00005 USD = 50,000 nano: the input bound costs 4,950, so 75 output tokens
    (45,000) fit and 76 would not."""
    client, config, creds = await make_gateway(projects=shrinking({"cost_usd": "0.00005"}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Budget-Shrunk-Max-Tokens"] == "75"
    assert upstream.last.json()["max_completion_tokens"] == 75
    state = await day_counter(redis, config)
    assert state["r3"] == 0


async def test_a_request_that_fits_is_not_shrunk(make_gateway: Any, upstream: FakeUpstream) -> None:
    client, _, creds = await make_gateway(projects=shrinking({"total_tokens": 10_000}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    assert "X-Budget-Shrunk-Max-Tokens" not in resp.headers
    assert upstream.last.json()["max_completion_tokens"] == 100


async def test_concurrent_shrunk_requests_never_pass_the_cap(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    """Ten at once against 200 tokens: each takes what is left while held, the holds
    together never exceed the cap, and those left with under 10 tokens get 402."""

    def slow(_rec: Any) -> Reply:
        return Reply(json=openai_completion(), delay_before_headers=0.5)

    upstream.default = slow
    client, config, creds = await make_gateway(projects=shrinking({"total_tokens": 200}))
    prefix = config.gateway.redis.key_prefix
    key = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['day']}"
    tasks = [
        asyncio.create_task(client.post(URL, json=chat_body(), headers=bearer(creds.key)))
        for _ in range(10)
    ]
    await asyncio.sleep(0.3)
    assert (await counter(redis, key))["r2"] <= 200
    results = await asyncio.gather(*tasks)
    admitted = [r for r in results if r.status == 200]
    assert 1 <= len(admitted) < 10
    assert all(r.status in (200, 402) for r in results)
    shrunk = [int(r.headers.get("X-Budget-Shrunk-Max-Tokens", 100)) for r in admitted]
    assert sum(33 + s for s in shrunk) <= 200
