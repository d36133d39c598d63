"""The fake upstream itself, exercised over real TCP with aiohttp.ClientSession."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_stream,
    fixture,
    openai_completion,
    openai_error,
    openai_stream,
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def sse_data(raw: bytes) -> list[str]:
    return [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]


async def test_records_request_and_default_unary(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    assert upstream.base_url.startswith("http://127.0.0.1:")
    assert upstream.base_url.endswith("/v1")
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    body = json.dumps(payload).encode()
    async with session.post(
        upstream.base_url + "/chat/completions?api-version=2024-10-21",
        data=body,
        headers={"Authorization": "Bearer sk-upstream", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        got = await resp.json()

    assert got["object"] == "chat.completion"
    assert got["model"] == "gpt-4o-mini"  # echoes the requested model
    assert got["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there",
        "refusal": None,
        "annotations": [],
    }
    assert got["usage"]["total_tokens"] == 14
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert got["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0

    [rec] = upstream.requests
    assert rec.method == "POST"
    assert rec.path == "/v1/chat/completions"
    assert rec.query == {"api-version": "2024-10-21"}
    assert rec.body == body
    assert rec.json() == payload
    assert rec.headers["Authorization"] == "Bearer sk-upstream"
    assert rec.header("authorization") == "Bearer sk-upstream"
    assert rec.header("x-missing") is None
    assert rec.completed
    assert not rec.disconnected


async def test_default_stream_honours_request(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url = upstream.base_url + "/chat/completions"
    req = {"model": "m", "messages": [], "stream": True}
    async with session.post(url, json=req) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        plain = await resp.read()
    req["stream_options"] = {"include_usage": True}
    async with session.post(url, json=req) as resp:
        with_usage = await resp.read()

    assert plain == openai_stream(["Hello", " there"], "m", include_usage=False)
    assert with_usage == openai_stream(["Hello", " there"], "m", include_usage=True)
    data = sse_data(with_usage)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["content"] == ""
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hello", " there"]
    assert chunks[3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["prompt_tokens"] == 11
    assert all(c["usage"] is None for c in chunks[:4])

    async with session.post(
        upstream.base_url + "/messages", json={"model": "claude-x", "stream": True}
    ) as resp:
        assert await resp.read() == anthropic_stream(["Hello", " there"], "claude-x")


async def test_scripted_statuses_then_default(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    upstream.script(
        Reply(
            status=429, json=openai_error(429, "Rate limit reached"), headers={"Retry-After": "7"}
        ),
        Reply(status=503, body=b"<html>bad gateway</html>", content_type="text/html"),
        lambda rec: Reply(json=openai_completion(content=f"echo {rec.json()['n']}")),
    )
    url = upstream.base_url + "/chat/completions"
    statuses = []
    for n in range(4):
        async with session.post(url, json={"n": n}) as resp:
            statuses.append(resp.status)
            if n == 0:
                assert resp.headers["Retry-After"] == "7"
                err = await resp.json()
                assert err["error"]["message"] == "Rate limit reached"
                assert err["error"]["code"] == "rate_limit_exceeded"
            elif n == 1:
                assert resp.content_type == "text/html"
                assert await resp.read() == b"<html>bad gateway</html>"
            elif n == 2:
                assert (await resp.json())["choices"][0]["message"]["content"] == "echo 2"
            else:
                assert (await resp.json())["object"] == "chat.completion"
    assert statuses == [429, 503, 200, 200]
    assert upstream.pending == 0
    assert [r.json()["n"] for r in upstream.requests] == [0, 1, 2, 3]


async def test_unknown_path_is_404(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with session.get(upstream.origin + "/nope") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


async def test_sse_slices_reassemble_byte_exact(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    stream = openai_stream(["Ünïcödé ", "split 🙂 ", "across slices"] * 5)
    upstream.script(Reply(sse=stream, slice_size=31, delay_between_slices=0.001))
    reads = 0
    got = b""
    async with session.post(upstream.base_url + "/chat/completions", json={}) as resp:
        assert resp.status == 200
        async for part in resp.content.iter_any():
            reads += 1
            got += part
    assert got == stream
    assert reads > 1  # really delivered in pieces
    assert upstream.requests[0].completed


@pytest.mark.parametrize(
    "name", ["openai_chat_text_include_usage.sse", "anthropic_messages_text_cache_usage.sse"]
)
async def test_recorded_fixture_served_in_97_byte_slices(
    upstream: FakeUpstream, session: aiohttp.ClientSession, name: str
) -> None:
    raw = fixture(name)
    upstream.script(Reply(sse=raw))  # slice_size defaults to 97
    async with session.post(upstream.base_url + "/chat/completions", json={}) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert await resp.read() == raw


async def test_cut_after_bytes_drops_connection(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    stream = openai_stream(["a", "b", "c"])
    upstream.script(Reply(sse=stream, cut_after_bytes=150, slice_size=50))
    got = b""
    async with session.post(upstream.base_url + "/chat/completions", json={}) as resp:
        assert resp.status == 200
        try:
            async for part in resp.content.iter_any():
                got += part
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            cut = True
        else:
            cut = False
    assert cut
    assert got == stream[:150]
    assert upstream.client_disconnects == 0  # the fake cut it, the client did not leave
    assert upstream.requests[0].cut
    assert not upstream.requests[0].completed

    # The server keeps serving after a cut.
    async with session.post(upstream.base_url + "/chat/completions", json={}) as resp:
        assert resp.status == 200


async def test_cut_unary_body(upstream: FakeUpstream, session: aiohttp.ClientSession) -> None:
    upstream.script(Reply(json=openai_completion(), cut_after_bytes=20))
    async with session.post(upstream.base_url + "/chat/completions", json={}) as resp:
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await resp.read()


async def test_delay_before_headers_times_out_client(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    upstream.script(Reply(delay_before_headers=5))
    timeout = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            upstream.base_url + "/chat/completions", json={}, timeout=timeout
        ) as resp:
            await resp.read()
    # The client gave up and closed the connection: the fake notices.
    await upstream.wait_disconnect(timeout=2)
    assert upstream.requests[0].disconnected


async def test_hang_after_bytes_stalls_until_client_leaves(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    stream = openai_stream(["x"] * 10)
    upstream.script(Reply(sse=stream, hang_after_bytes=100))
    async with session.post(upstream.base_url + "/chat/completions", json={}) as resp:
        got = await resp.content.readexactly(100)
        assert got == stream[:100]
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.3):
                await resp.content.read(1)
        assert upstream.client_disconnects == 0
        resp.close()  # drop the connection mid-stream
    await upstream.wait_disconnect(timeout=2)
    assert upstream.client_disconnects == 1
    assert upstream.requests[0].disconnected
    assert not upstream.requests[0].completed


async def test_client_disconnect_mid_stream_is_counted(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    stream = openai_stream([f"piece {i} " for i in range(200)])
    upstream.script(Reply(sse=stream, slice_size=64, delay_between_slices=0.01))
    async with session.post(upstream.base_url + "/chat/completions", json={}) as resp:
        await resp.content.readexactly(64)
        resp.close()
    await upstream.wait_disconnect(timeout=2)
    assert upstream.client_disconnects == 1
    rec: Recorded = upstream.requests[0]
    assert rec.disconnected
    assert not rec.completed


async def test_close_with_stalled_request_is_quick(session: aiohttp.ClientSession) -> None:
    fake = FakeUpstream()
    await fake.start()
    fake.script(Reply(sse=b"data: {}\n\n", hang_after_bytes=0))
    resp = await session.post(fake.base_url + "/chat/completions", json={})
    assert resp.status == 200
    async with asyncio.timeout(3):
        await fake.close()
    assert fake.client_disconnects == 0  # server shutdown is not a client disconnect
    resp.close()
