"""The status a request is recorded with (access log, requests_total) is what the client got."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.support.harness import Gateway, bearer, chat_body
from tests.support.redis import pause_writes, stream_entries, tag, unpause
from tests.support.upstream import FakeUpstream, Reply, openai_stream

URL = "/v1/projects/alpha/chat/completions"


def access_statuses(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [
        getattr(r, "fields", {}).get("status")
        for r in caplog.records
        if r.name == "gateway.access" and r.getMessage() == "request"
    ]


async def test_a_stream_read_to_the_end_then_closed_is_a_200_not_a_499(
    gateway: Gateway, upstream: FakeUpstream, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """SDKs close the connection as soon as they read [DONE]. If that lands while the
    hold settles (here: Redis holds writes for a second), the handler is cancelled after
    the client had the whole answer: it was recorded as a 499 (1 stream in 8, measured)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    client, config, creds = gateway
    upstream.script(Reply(sse=openai_stream(["a ", "b ", "c"]), delay_between_slices=0.05))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    await resp.content.readline()  # admitted: the reservation is made
    await pause_writes(redis, 1500)
    try:
        raw = b""
        while b"[DONE]" not in raw:
            line = await resp.content.readline()
            assert line, raw
            raw += line
        resp.close()  # at once, as the SDKs do
        for _ in range(100):
            if access_statuses(caplog):
                break
            await asyncio.sleep(0.05)
    finally:
        await unpause(redis)
    assert access_statuses(caplog) == [200]
    # The ledger's event of the request says the same (written once Redis takes writes).
    ledger = tag(config.gateway.redis.key_prefix, "prj_alpha") + "ledger"
    for _ in range(100):
        if events := await stream_entries(redis, ledger):
            break
        await asyncio.sleep(0.05)
    [(_, fields)] = events
    event = json.loads(fields[b"event"])
    assert (event["status"], event["outcome"]) == (200, "completed")
