"""Automatic pipelining against a real Redis: replies reach their own callers, one
command's error does not touch its neighbours, a caller that gives up does not shift
anyone's reply, and an unreachable server fails every pending call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from gateway.autopipeline import AutoPipeline, pack_command
from gateway.serve.resources import redis_client
from tests.support.ports import free_port

ECHO = "return ARGV[1]"
SLOW = (
    "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
    "if (n[1] - t[1]) * 1e6 + (n[2] - t[2]) > tonumber(ARGV[1]) * 1000 then "
    "return ARGV[2] end end"
)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = redis_client(redis_url, 2.0)
    assert isinstance(redis, Redis)  # a redis:// URL: a plain client, not a cluster's
    try:
        yield redis
    finally:
        await redis.aclose()


async def _sha(redis: Redis, script: str) -> bytes:
    return (await redis.script_load(script)).encode()


async def test_concurrent_calls_get_their_own_replies(client: Redis) -> None:
    pipeline = AutoPipeline(client, max_batch=16)  # several batches in flight at once
    sha = await _sha(client, ECHO)
    calls = [pipeline.submit(pack_command(b"EVALSHA", sha, [], [str(i)])) for i in range(300)]
    replies = await asyncio.gather(*calls)
    assert replies == [str(i).encode() for i in range(300)]


async def test_an_error_reply_fails_only_its_own_call(client: Redis) -> None:
    pipeline = AutoPipeline(client)
    sha = await _sha(client, ECHO)
    good = [pipeline.submit(pack_command(b"EVALSHA", sha, [], [str(i)])) for i in range(3)]
    bad = pipeline.submit(pack_command(b"EVALSHA", b"0" * 40, [], ["x"]))
    more = [pipeline.submit(pack_command(b"EVALSHA", sha, [], [str(i)])) for i in range(3, 6)]
    assert await asyncio.gather(*good) == [b"0", b"1", b"2"]
    with pytest.raises(NoScriptError):
        await bad
    assert await asyncio.gather(*more) == [b"3", b"4", b"5"]


async def test_a_caller_giving_up_does_not_shift_later_replies(client: Redis) -> None:
    pipeline = AutoPipeline(client)
    slow, echo = await _sha(client, SLOW), await _sha(client, ECHO)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pipeline.submit(pack_command(b"EVALSHA", slow, [], ["200", "late"]))
    # The slow reply is still read (and dropped) by the pipeline, never handed to these.
    replies = await asyncio.gather(
        *(pipeline.submit(pack_command(b"EVALSHA", echo, [], [f"r{i}"])) for i in range(20))
    )
    assert replies == [f"r{i}".encode() for i in range(20)]


async def test_an_unreachable_server_fails_every_pending_call() -> None:
    redis = redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    assert isinstance(redis, Redis)
    try:
        pipeline = AutoPipeline(redis)
        calls = [pipeline.submit(pack_command(b"EVALSHA", b"0" * 40, [], [])) for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        await redis.aclose()


async def test_a_server_that_stops_answering_frees_the_connection() -> None:
    """A server that accepts and reads but never replies (a hung or partitioned Redis
    keeps the TCP connection open): the batch is abandoned after the reply timeout, its
    callers fail, and the connection is closed rather than left checked out for ever."""
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = redis_client(f"redis://127.0.0.1:{port}/0", 5.0)
    assert isinstance(redis, Redis)
    try:
        pipeline = AutoPipeline(redis, reply_timeout=0.3)
        calls = [pipeline.submit(pack_command(b"EVALSHA", b"0" * 40, [], [])) for _ in range(3)]
        async with asyncio.timeout(5):
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert len(accepted) == 1
        pool = redis.connection_pool
        assert not pool._in_use_connections  # released to the pool ...
        assert all(not c.is_connected for c in pool._available_connections)  # ... closed
    finally:
        await redis.aclose()
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()


async def test_a_call_past_its_deadline_fails_and_the_next_replies_stay_in_order(
    client: Redis,
) -> None:
    """The pipeline's own deadline (no timer per call): a call whose reply is late fails
    with TimeoutError soon after call_timeout, its late reply is read and dropped, and
    the calls after it get their own replies."""
    pipeline = AutoPipeline(client, call_timeout=0.2)
    slow, echo = await _sha(client, SLOW), await _sha(client, ECHO)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await pipeline.submit(pack_command(b"EVALSHA", slow, [], ["600", "late"]))
    waited = asyncio.get_running_loop().time() - started
    assert 0.2 <= waited < 0.45, waited  # at most a quarter of the timeout late (+ slack)
    await asyncio.sleep(0.5)  # the late reply arrives meanwhile, and must go nowhere
    replies = await asyncio.gather(
        *(pipeline.submit(pack_command(b"EVALSHA", echo, [], [f"r{i}"])) for i in range(20))
    )
    assert replies == [f"r{i}".encode() for i in range(20)]


async def test_calls_answered_in_time_are_not_failed_by_the_deadline(client: Redis) -> None:
    pipeline = AutoPipeline(client, call_timeout=0.1)
    echo = await _sha(client, ECHO)
    for round_ in range(5):  # across several sweeps
        replies = await asyncio.gather(
            *(pipeline.submit(pack_command(b"EVALSHA", echo, [], [f"{round_}"])) for _ in range(10))
        )
        assert replies == [f"{round_}".encode()] * 10
        await asyncio.sleep(0.04)
    await asyncio.sleep(0.1)
    assert pipeline._sweeper is None  # nothing waits: no timer left armed
