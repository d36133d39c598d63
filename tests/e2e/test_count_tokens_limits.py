"""count_tokens is never billed but counts against the requests-per-minute limits, and
is refused in Anthropic's shape past them."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from redis.asyncio import Redis

from tests.support.redis import wait_released, window_ids
from tests.support.upstream import FakeUpstream


async def test_count_tokens_is_rate_limited_not_billed(
    make_gateway: Any, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        projects={"alpha": {"rate_limits": {"requests_per_minute": 2}}}
    )
    api = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("/v1/projects/alpha")), api_key=creds.key, max_retries=0
    )
    messages: Any = [{"role": "user", "content": "Hello"}]
    try:
        for _ in range(2):
            counted = await api.messages.count_tokens(model="default", messages=messages)
            assert counted.input_tokens > 0
        with pytest.raises(anthropic.RateLimitError) as refused:
            await api.messages.count_tokens(model="default", messages=messages)
        assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert "requests per minute limit (2)" in str(refused.value)
    finally:
        await api.close()
    assert not upstream.requests
    prefix = config.gateway.redis.key_prefix
    key = f"{prefix}:{{prj:prj_alpha}}:p:{(await window_ids(redis))['lifetime']}"
    assert (await wait_released(redis, key)).get("u2", 0) == 0
