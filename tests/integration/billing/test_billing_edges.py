"""Billing at the edges of the relay: answers without usage, streams with several
choices, running (non-final) usage, a client that stops reading. Real fake upstream over
TCP, real Redis.

``chat_body("Hello")`` has an input bound of 33 tokens; the harness projects cap output
at 100 tokens per request; gpt-4o-mini costs 150 / 600 nano-USD per input / output token.
Where no final usage arrives (none at all, or none after the last choice finished) the
gateway bills the input at its bound and the output at the reserved ceiling, never below
a running count or the deltas it saw: never less than the truth.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import orjson
import pytest
from redis.asyncio import Redis

from gateway.context import STATE
from tests.support.billing import used
from tests.support.harness import GatewayFactory, bearer, chat_body
from tests.support.metrics import metric
from tests.support.redis import settled
from tests.support.upstream import FakeUpstream, Reply, choice, chunk, openai_completion, sse

URL = "/v1/projects/alpha/chat/completions"
INPUT_BOUND, CEILING = 33, 100


def running(completion_tokens: int, prompt_tokens: int = 20) -> dict[str, int]:
    """vLLM's continuous_usage_stats: the running count, on every chunk."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# ------------------------------------------------------------- unary answer without usage


async def test_unary_without_usage_bills_the_output_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """An answer without usage says nothing of the reasoning tokens the provider billed
    as output: its visible text (here tool-call arguments, a reasoning summary) is not
    what it cost. The output is billed at the reserved ceiling, the input at its bound."""
    client, config, creds = await make_gateway(projects={"alpha": {"max_output_tokens": 1000}})
    arguments = json.dumps({"location": "Paris, France", "unit": "celsius", "note": "x" * 40})
    tool_calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }
    ]
    completion = openai_completion()
    del completion["usage"]
    completion["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "reasoning_content": "The user wants the weather: call the tool.",
        "tool_calls": tool_calls,
    }
    completion["choices"][0]["finish_reason"] = "tool_calls"
    upstream.script(Reply(json=completion))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["choices"][0]["message"]["tool_calls"] == tool_calls
    produced = len(orjson.dumps(tool_calls)) + len("The user wants the weather: call the tool.")
    assert produced < 1000  # what the visible text would have billed
    assert body["usage"]["output_tokens"] == 1000
    assert await settled(redis, config) == used(INPUT_BOUND, 1000)
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="no_usage")
        == 1
    )


# ------------------------------------------------------------- streams of several choices


async def test_stream_cut_after_one_of_two_choices_finished_bills_the_remainder(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """n=2: choice 0 finished, choice 1 was cut mid-generation: the stream did not
    finish, so its unknown remainder is billed at the reservation (2 x 100)."""
    client, config, creds = await make_gateway()
    head = sse(
        chunk(
            choices=[
                choice({"role": "assistant", "content": ""}),
                choice({"role": "assistant"}, index=1),
            ]
        ),
        chunk({"content": "Hi"}),
        chunk({}, "stop"),
        chunk({"content": "abc"}, index=1),
    )
    tail = sse(
        chunk({"content": "d" * 50}, "length", index=1),
        chunk(choices=[], usage=running(200)),
    )
    upstream.script(Reply(sse=head + tail + b"data: [DONE]\n\n", cut_after_bytes=len(head)))
    body = chat_body(stream=True, n=2, max_tokens=100)
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    assert "event: error" in await resp.text()
    assert upstream.last.cut
    assert await settled(redis, config) == used(INPUT_BOUND, 2 * CEILING)
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="stream_cut")
        == 1
    )


async def test_stream_of_two_choices_both_finished_without_usage_bills_the_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """Both choices finished, but the usage the gateway asked for never came: the
    visible text (9 bytes) is no bound of what was generated (reasoning tokens are
    unseen), so the output is billed at the reservation (2 x 100)."""
    client, config, creds = await make_gateway()
    raw = sse(
        chunk(
            choices=[
                choice({"role": "assistant", "content": "Hi"}),
                choice({"content": "abc"}, index=1),
            ]
        ),
        chunk({}, "stop"),
        chunk({"content": "defg"}, "stop", index=1),
        done=True,
    )
    upstream.script(Reply(sse=raw))
    body = chat_body(stream=True, n=2, max_tokens=100)
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    assert "event: error" not in await resp.text()
    assert await settled(redis, config) == used(INPUT_BOUND, 2 * CEILING)
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="no_usage")
        == 1
    )


# ------------------------------------------------ running usage (continuous_usage_stats)


@pytest.mark.parametrize("prompt_tokens", [20, 50])
async def test_stream_cut_after_running_usage_bills_the_reservation(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, prompt_tokens: int
) -> None:
    """Usage on chunks that carry choices is a running count: a cut after it bills the
    reservation, and never less than that count (input 50 > the bound of 33)."""
    client, config, creds = await make_gateway()
    head = sse(
        chunk({"role": "assistant", "content": ""}, usage=running(0, prompt_tokens)),
        *(chunk({"content": f"w{i} "}, usage=running(i + 1, prompt_tokens)) for i in range(3)),
    )
    tail = sse(chunk({"content": "more"}, "stop", usage=running(90, prompt_tokens)))
    upstream.script(Reply(sse=head + tail + b"data: [DONE]\n\n", cut_after_bytes=len(head)))
    body = chat_body(stream=True, stream_options={"continuous_usage_stats": True})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    assert "event: error" in await resp.text()
    assert upstream.last.json()["stream_options"] == {
        "continuous_usage_stats": True,
        "include_usage": True,
    }
    assert await settled(redis, config) == used(max(INPUT_BOUND, prompt_tokens), CEILING)


async def test_stream_with_running_usage_that_finishes_bills_the_final_usage(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    raw = sse(
        chunk({"role": "assistant", "content": ""}, usage=running(0)),
        *(chunk({"content": f"w{i} "}, usage=running(i + 1)) for i in range(3)),
        chunk({}, "stop", usage=running(3)),
        chunk(choices=[], usage=running(3)),
        done=True,
    )
    upstream.script(Reply(sse=raw))
    body = chat_body(stream=True, stream_options={"continuous_usage_stats": True})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    await resp.text()
    assert await settled(redis, config) == used(20, 3)


# ------------------------------------------------------------ a client that stops reading


async def test_client_that_stops_reading_is_dropped_after_the_idle_timeout(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Zero window: the relay's write would block for ever, the upstream connection and
    the budget hold with it. A write the client accepts nothing of for the provider's
    idle timeout ends the stream as a disconnect: upstream closed, worst case billed."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    idle = 1.0
    provider = {
        "kind": "openai",
        "base_url": upstream.base_url,
        "api_key_env": "TEST_PROVIDER_KEY",
        "timeouts": {"connect": 2, "first_byte": 2, "idle": idle, "total": 30},
    }
    client, config, creds = await make_gateway(gateway={"providers": {"upstream": provider}})
    # Far more than every buffer between the upstream and the client holds (24 MB), in
    # fewer deltas than the output ceiling (the relay would cut past it); never ends.
    piece = chunk({"content": "x" * 400_000})
    raw = sse(*([piece] * 60))
    upstream.script(Reply(sse=raw, slice_size=65536, hang_after_bytes=len(raw)))

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.server.host, client.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        payload = json.dumps(chat_body(stream=True)).encode()
        writer.write(
            f"POST {URL} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {creds.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        assert (await reader.read(64)).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        # From here on the client reads nothing.
        state = await settled(redis, config, timeout=idle + 5)
        assert time.monotonic() - started < idle + 5
        assert state == used(INPUT_BOUND, CEILING)  # no usage came: the worst case
        await upstream.wait_disconnect()
        assert upstream.last.disconnected
        assert not upstream.last.completed
        assert not client.app[STATE].handlers
        assert (
            await metric(
                client, "gateway_estimated_usage_total", project="alpha", reason="stream_cut"
            )
            == 1
        )
        outcomes = [
            getattr(r, "fields", {}).get("stream_outcome")
            for r in caplog.records
            if r.name == "gateway.access"
        ]
        assert "client_disconnected" in outcomes, outcomes
    finally:
        writer.close()
