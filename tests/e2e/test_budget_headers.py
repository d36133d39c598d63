"""Remaining-budget headers as an SDK user reads them (``with_raw_response``), and
OpenAI-style ``x-ratelimit-*`` for the gateway's own limits: on every answer of a
spending route, streams included, never more than is left."""

from __future__ import annotations

from typing import Any

import openai

from tests.support.upstream import FakeUpstream, Reply, openai_completion

CAPS = {
    "budgets": {
        "project": {"day": {"total_tokens": 1000, "cost_usd": "0.01"}},
        "per_key": {"month": {"total_tokens": 500}},
    },
    "rate_limits": {"requests_per_minute": 60, "per_key": {"requests_per_minute": 30}},
}
WORST = 33 + 100  # chat_body("Hello")'s input bound + the harness projects' ceiling


async def test_headers_after_two_answers(make_gateway: Any, upstream: FakeUpstream) -> None:
    client, _, creds = await make_gateway(projects={"alpha": CAPS})
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    messages: Any = [{"role": "user", "content": "Hello"}]
    try:
        upstream.script(Reply(json=openai_completion(prompt_tokens=11, completion_tokens=3)))
        first = await api.chat.completions.with_raw_response.create(
            model="default", messages=messages
        )
        upstream.script(Reply(json=openai_completion(prompt_tokens=11, completion_tokens=3)))
        second = await api.chat.completions.with_raw_response.create(
            model="default", messages=messages
        )
        async with api.chat.completions.with_streaming_response.create(
            model="default", messages=messages, stream=True
        ) as streamed:
            stream_headers = streamed.headers
            await streamed.read()
    finally:
        await api.close()
    # The key's monthly 500 is tighter than the project's daily 1000.
    assert first.headers["X-Budget-Limit-Tokens"] == "500"
    assert int(first.headers["X-Budget-Remaining-Tokens"]) == 500 - WORST
    # The first answer settled at 14 tokens: the second sees that, and its own worst case.
    assert int(second.headers["X-Budget-Remaining-Tokens"]) == 500 - 14 - WORST
    assert second.headers["X-Budget-Reset-Tokens"].endswith("-01T00:00:00Z")
    assert second.headers["X-Budget-Limit-USD"] == "0.010000"
    assert float(second.headers["X-Budget-Remaining-USD"]) < 0.01
    assert second.headers["x-ratelimit-limit-requests"] == "30"  # the key's, tighter
    assert second.headers["x-ratelimit-remaining-requests"] == "28"
    assert second.headers["x-ratelimit-reset-requests"].endswith("s")
    assert stream_headers["x-ratelimit-remaining-requests"] == "27"
    assert "X-Budget-Remaining-Tokens" in stream_headers


async def test_no_headers_on_a_refusal(make_gateway: Any, upstream: FakeUpstream) -> None:
    small = {"budgets": {"project": {"day": {"total_tokens": 50}}}}
    client, _, creds = await make_gateway(projects={"alpha": small})
    resp = await client.post(
        "/v1/projects/alpha/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}]},
        headers={"Authorization": f"Bearer {creds.key}"},
    )
    assert resp.status == 402
    assert "X-Budget-Remaining-Tokens" not in resp.headers
