"""Faults: client disconnects, upstream failures, a gateway crash, a Redis outage.

Gateways run as real ``gateway serve`` subprocesses (tests/support/process.py) against a real
Redis; the fake upstream runs in the test's event loop, reached over TCP. Numbers:
``chat_body(text)`` with one user message has an input bound of 16 + 8 + 4 + len(text)
tokens; the harness projects have ``max_output_tokens: 100``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.budget import keys
from tests.support.billing import cost
from tests.support.harness import (
    STORE_TIMEOUT_FAST,
    Credentials,
    GatewayFactory,
    bearer,
    chat_body,
    key_prefix,
    provider_entry,
    write_config,
)
from tests.support.metrics import scrape
from tests.support.process import Spawn
from tests.support.redis import (
    FIELDS,
    RedisServer,
    counter,
    hash_text,
    parse_event,
    pause_writes,
    stream_entries,
    window_ids,
)
from tests.support.sse import read_chunks
from tests.support.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    default_reply,
    openai_error,
    openai_stream,
    slow_stream,
)
from tests.support.wait import wait_for

URL = "/v1/projects/alpha/chat/completions"
CEILING = 100
# Each test's end users get their own counter, so every request's hold can be read apart.
PER_USER_BUDGETS = {
    "project": {"month": {"total_tokens": 1_000_000}},
    "per_user": {"day": {"total_tokens": 100_000}},
}
FIGURES = Path("/tmp/gateway-fault-figures.json")


def bound(text: str) -> int:
    return 16 + 8 + 4 + len(text.encode())


def worst(text: str) -> tuple[int, int, int, int]:
    i = bound(text)
    return i, CEILING, i + CEILING, cost(i, CEILING)


def record_figures(section: str, figures: dict[str, Any]) -> None:
    """Print the figures and merge them into FIGURES (the lead's closing note)."""
    print(f"\n[{section}] " + json.dumps(figures, sort_keys=True))
    # Locked: tests on other xdist workers merge theirs into the same file.
    with FIGURES.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            existing = json.loads(FIGURES.read_text())
        except (OSError, ValueError):
            existing = {}
        existing[section] = figures
        FIGURES.write_text(json.dumps(existing, indent=2, sort_keys=True))


def held_amount(state: dict[str, int]) -> int:
    return sum(abs(state[f"r{d}"]) for d in range(4))


def ptag(creds: Credentials, project_id: str = "prj_alpha") -> str:
    return keys.tag(key_prefix(creds), project_id)


def user_key(tag_: str, sub: str, window_id: str) -> str:
    """An end user's counter under ``tag_``."""
    return keys.counter_key(tag_, keys.user_part(sub), window_id)


# ============================================================================== disconnects


async def test_client_disconnect_after_k_chunks_releases_and_bills_at_least_the_output(
    tmp_path: Path,
    upstream: FakeUpstream,
    redis_url: str,
    redis: Redis,
    spawn: Spawn,
    http_pool: aiohttp.ClientSession,
) -> None:
    """Four streams, cut by the client after 0, 1, 3 and 10 chunks, each by its own end
    user (own counter). The reservation is released and the output billed is at least
    what the upstream produced before the cut: no usage ever arrived, so the unknown
    output is billed at the reserved ceiling."""
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        projects={"alpha": {"budgets": PER_USER_BUDGETS}},
    )
    gateway = await spawn(creds)
    upstream.default = lambda rec: slow_stream()
    tag = ptag(creds)
    ids = await window_ids(redis)
    cuts = (0, 1, 3, 10)

    async def cut_after(k: int) -> tuple[int, str]:
        auth = bearer(creds.session(sub=f"cut-{k}"))
        resp = await http_pool.post(
            gateway.url(URL), json=chat_body(f"cut {k}", stream=True), headers=auth
        )
        assert resp.status == 200
        chunks = await read_chunks(resp, k)
        seen = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        resp.close()
        return k, seen

    results = await asyncio.gather(*(cut_after(k) for k in cuts))
    await upstream.wait_disconnect(count=len(cuts), timeout=10)
    assert all(r.disconnected and not r.completed for r in upstream.requests)

    full = 60  # pieces in the upstream's whole stream: the most it could have produced
    for k, seen in results:
        key = user_key(tag, f"cut-{k}", ids["day"])

        async def released(key: str = key) -> bool:
            state = await counter(redis, key)
            return held_amount(state) == 0 and state["u2"] > 0

        await wait_for(released, what=f"the settlement of the stream cut after {k} chunks")
        state = await counter(redis, key)
        i, o, t, c = worst(f"cut {k}")
        assert state == {"u0": i, "u1": o, "u2": t, "u3": c, "r0": 0, "r1": 0, "r2": 0, "r3": 0}
        produced_seen = len(seen.split())
        assert produced_seen == max(k - 1, 0)  # the first chunk is the role chunk
        assert state["u1"] >= full >= produced_seen
    assert await redis.hlen(tag + "rsv") == 0
    assert await redis.zcard(tag + "rsvexp") == 0
    month = await counter(redis, f"{tag}p:{ids['month']}")
    assert held_amount(month) == 0
    assert month["u2"] == sum(worst(f"cut {k}")[2] for k in cuts)
    events = [parse_event(e) for _, e in await stream_entries(redis, tag + "ledger")]
    assert len(events) == len(cuts)
    assert {e["outcome"] for e in events} == {"client_disconnected"}


# ============================================================================== upstream faults


SCENARIOS: dict[str, tuple[bool, int, str]] = {
    # name: (stream, status the client gets, what is billed: "nothing" | "worst")
    "error-before-first-byte": (True, 502, "nothing"),
    "unary-error-before-first-byte": (False, 502, "nothing"),
    "cut-mid-stream": (True, 200, "worst"),
    "error-event-mid-stream": (True, 200, "worst"),
    "idle-timeout-mid-stream": (True, 200, "worst"),
    "first-byte-timeout": (True, 504, "nothing"),
    # No answer within total: the provider accepted the request and may bill it in full,
    # so the worst case is billed. (A unary answer's headers come when all of it is
    # ready: only total bounds that wait, neither first_byte nor idle.)
    "unary-total-timeout": (False, 504, "worst"),
}


def _failing_upstream(rec: Recorded) -> Reply:
    text = rec.json()["messages"][0]["content"]
    raw = openai_stream([f"p{i:02d} " for i in range(20)], prompt_tokens=20, completion_tokens=40)
    head = sum(len(e) + 2 for e in raw.split(b"\n\n")[:4])  # role chunk + 3 pieces
    if text.endswith("error-before-first-byte"):
        return Reply(status=500, json=openai_error(500))
    if text == "cut-mid-stream":
        return Reply(sse=raw, cut_after_bytes=head + 50)
    if text == "error-event-mid-stream":
        error = json.dumps({"error": {"message": "overloaded", "type": "server_error"}})
        return Reply(sse=raw[:head] + f"data: {error}\n\n".encode())
    if text == "idle-timeout-mid-stream":
        return Reply(sse=raw, hang_after_bytes=head)
    if text.endswith(("first-byte-timeout", "total-timeout")):
        return Reply(sse=raw, delay_before_headers=4)
    raise AssertionError(f"unexpected request {text!r}")


async def test_upstream_failures_settle_or_release_every_reservation(
    tmp_path: Path,
    upstream: FakeUpstream,
    redis_url: str,
    redis: Redis,
    spawn: Spawn,
    http_pool: aiohttp.ClientSession,
) -> None:
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        projects={"alpha": {"budgets": PER_USER_BUDGETS}},
        gateway={
            "providers": {
                "upstream": provider_entry(upstream.base_url, first_byte=1, idle=1, total=3)
            },
            "resilience": {"breaker": {"failure_threshold": 100}},
        },
    )
    gateway = await spawn(creds)
    upstream.default = _failing_upstream
    tag = ptag(creds)
    ids = await window_ids(redis)

    async def run(name: str) -> tuple[str, int, str]:
        stream = SCENARIOS[name][0]
        auth = bearer(creds.session(sub=name))
        async with http_pool.post(
            gateway.url(URL), json=chat_body(name, stream=stream), headers=auth
        ) as resp:
            async with asyncio.timeout(10):
                return name, resp.status, await resp.text()

    results = await asyncio.gather(*(run(name) for name in SCENARIOS))
    for name, status, text in results:
        _, expected_status, _ = SCENARIOS[name]
        assert status == expected_status, (name, status, text)
        if status == 200:
            assert "event: error" in text, name
            assert "[DONE]" not in text, name

    total = 0
    for name, (_, _, billed) in SCENARIOS.items():
        key = user_key(tag, name, ids["day"])

        async def settled(key: str = key) -> bool:
            return held_amount(await counter(redis, key)) == 0

        await wait_for(settled, what=f"the settlement of {name}")
        state = await counter(redis, key)
        if billed == "nothing":
            assert state == dict.fromkeys(FIELDS, 0), (name, state)
        else:
            i, o, t, c = worst(name)
            expected = {"u0": i, "u1": o, "u2": t, "u3": c, "r0": 0, "r1": 0, "r2": 0, "r3": 0}
            assert state == expected, (name, state)
            total += t
    assert await redis.hlen(tag + "rsv") == 0
    assert await redis.zcard(tag + "rsvexp") == 0
    month = await counter(redis, f"{tag}p:{ids['month']}")
    assert held_amount(month) == 0
    assert month["u2"] == total
    # One ledger event per request, failures included.
    events = [parse_event(e) for _, e in await stream_entries(redis, tag + "ledger")]
    assert sorted(e["user"] for e in events) == sorted(SCENARIOS)


# ============================================================================== crash


# Serial: the three holds must be taken at about the same instant (they expire one by
# one otherwise, and a probe between two expiries sees them partly charged).
@pytest.mark.serial
async def test_crashed_gateway_reservations_hold_until_their_expiry_then_are_charged(
    tmp_path: Path,
    upstream: FakeUpstream,
    redis_url: str,
    redis: Redis,
    spawn: Spawn,
    http_pool: aiohttp.ClientSession,
) -> None:
    """SIGKILL a gateway with three streams in flight: their worst cases stay held (a
    request that fits only without them gets 402, the body saying reserved) until
    reservation_ttl_seconds (10) passes, then they are charged at their worst case (the
    same 402 now says used), never released: nobody recorded those answers."""
    ttl = 10  # the shortest hold the provider's timeouts allow: 4 + 1 + 5 s
    text = "Hello"
    w = worst(text)[2]  # 133
    cap = 3 * w + w // 2  # three worst cases fit, four do not
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        projects={"alpha": {"budgets": {"project": {"month": {"total_tokens": cap}}}}},
        gateway={
            "limits": {"reservation_ttl_seconds": ttl},
            # The victim is killed well before a stream could time out.
            "providers": {"upstream": provider_entry(upstream.base_url, total=4, idle=1)},
        },
    )
    victim, survivor = await asyncio.gather(spawn(creds), spawn(creds))
    tag = ptag(creds)
    month_key = f"{tag}p:{(await window_ids(redis))['month']}"

    def replies(rec: Recorded) -> Reply:
        if rec.json().get("stream"):
            return slow_stream(200)  # ~20 s: outlives the test
        return default_reply(rec)  # the probes: 11 + 3 tokens

    upstream.default = replies

    async def stream() -> None:
        # Cut by the crash: before the headers (no chunk yet) or in the middle of the body.
        with pytest.raises((aiohttp.ClientError, asyncio.IncompleteReadError)):  # noqa: PT012
            async with http_pool.post(
                victim.url(URL), json=chat_body(text, stream=True), headers=bearer(creds.key)
            ) as resp:
                assert resp.status == 200
                await resp.read()

    streams = [asyncio.create_task(stream()) for _ in range(3)]

    async def all_held() -> bool:
        return (await counter(redis, month_key))["r2"] == 3 * w

    await wait_for(all_held, timeout=10, what="three reservations in flight")
    t_held = time.monotonic()
    victim.kill()
    t_killed = time.monotonic()
    await asyncio.gather(*streams)
    await upstream.wait_disconnect(count=3, timeout=5)

    refused_after_kill = 0
    charged_at = None
    last_refusal: dict[str, Any] = {}
    while time.monotonic() < t_held + ttl + 10:
        resp = await http_pool.post(
            survivor.url(URL), json=chat_body(text), headers=bearer(creds.key)
        )
        body = await resp.json()
        assert resp.status == 402, body
        if body["used"] > 0:
            charged_at = time.monotonic()
            break
        refused_after_kill += 1
        last_refusal = body
        await asyncio.sleep(0.1)
    assert charged_at is not None, "the crashed reservations were never charged"
    held_for = charged_at - t_held
    record_figures(
        "crash",
        {
            "reservation_ttl_seconds": ttl,
            "held_after_kill_s": round(charged_at - t_killed, 2),
            "held_since_observed_s": round(held_for, 2),
            "probes_refused_while_held": refused_after_kill,
        },
    )
    assert refused_after_kill > 0
    # While held, the refusals saw exactly the three crashed holds, and no usage.
    assert (last_refusal["reserved"], last_refusal["used"], last_refusal["requested"]) == (
        3 * w,
        0,
        w,
    )
    # Past their expiry: the same three worst cases, now used, nothing reserved.
    assert (body["reserved"], body["used"], body["requested"]) == (0, 3 * w, w)
    assert ttl - 1.0 <= held_for <= ttl + 2.0, held_for
    state = await counter(redis, month_key)
    assert held_amount(state) == 0
    assert state["u2"] == 3 * w
    assert await redis.hlen(tag + "rsv") == 0
    events = [parse_event(e) for _, e in await stream_entries(redis, tag + "ledger")]
    assert [(e["kind"], e["total_tokens"]) for e in events] == [("expired_hold", w)] * 3


# ============================================================================== Redis outage


class Load:
    """Clients sending requests in a loop, recording (start, end, status, Retry-After)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> None:
        self.http, self.url, self.auth = http, url, auth
        self.results: list[tuple[float, float, int, str | None]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            body = chat_body(f"load {n}-{i}", stream=(n + i) % 2 == 0)
            started = time.monotonic()
            try:
                async with self.http.post(
                    self.url,
                    json=body,
                    headers=self.auth,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    await resp.read()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                status, retry_after = -1, None
            self.results.append((started, time.monotonic(), status, retry_after))
            await asyncio.sleep(0.02)

    def start(self, clients: int) -> None:
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.mark.serial
@pytest.mark.parametrize("failure", ["stopped", "hanging"])
async def test_redis_outage_fails_fast_and_recovers_without_a_restart(
    tmp_path: Path,
    upstream: FakeUpstream,
    spawn: Spawn,
    http_pool: aiohttp.ClientSession,
    failure: str,
) -> None:
    """A private persistent Redis (AOF, fsync always) is stopped (SIGTERM) or frozen
    (SIGSTOP) under load: every request answers 503 + Retry-After in under a second,
    /readyz says 503; when Redis is back, the same gateway serves again and the usage
    settled before the outage is still there."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    server.start()
    assert server.dir.is_dir()
    assert os.access(server.dir, os.W_OK)
    try:
        await _outage(tmp_path, upstream, spawn, http_pool, failure, server)
    finally:
        if server.proc is not None and failure == "hanging":
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


async def _outage(
    tmp_path: Path,
    upstream: FakeUpstream,
    spawn: Spawn,
    http_pool: aiohttp.ClientSession,
    failure: str,
    server: RedisServer,
) -> None:
    creds = write_config(
        tmp_path / "cfg", upstream.base_url, server.url, gateway=STORE_TIMEOUT_FAST
    )
    gateway = await spawn(creds)
    auth = bearer(creds.key)
    tag = ptag(creds)
    redis = Redis.from_url(server.url, socket_timeout=2)
    month_key = f"{tag}p:{(await window_ids(redis))['month']}"
    await redis.aclose()  # reconnected after the outage: this one's connection dies with it

    def slowish(rec: Recorded) -> Reply:
        reply = default_reply(rec)
        reply.delay_before_headers = 0.05
        return reply

    upstream.default = slowish
    redis = Redis.from_url(server.url, socket_timeout=2)
    for stream in (False, True, False):
        async with http_pool.post(
            gateway.url(URL), json=chat_body(stream=stream), headers=auth
        ) as r:
            assert r.status == 200
            await r.read()
    before = await counter(redis, month_key)
    assert before["u2"] == 3 * 14
    assert held_amount(before) == 0
    await redis.aclose()

    load = Load(http_pool, gateway.url(URL), auth)
    load.start(clients=8)
    await asyncio.sleep(0.5)
    assert server.proc is not None
    if failure == "stopped":
        server.proc.terminate()
        await asyncio.to_thread(server.proc.wait, 10)
    else:
        server.proc.send_signal(signal.SIGSTOP)
    t_down = time.monotonic()
    await asyncio.sleep(0.3)

    started = time.monotonic()
    async with http_pool.get(
        gateway.url("/readyz"), timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        readyz_status, readyz_body = resp.status, await resp.json()
    readyz_seconds = time.monotonic() - started
    await asyncio.sleep(1.7)
    await load.stop()

    during = [r for r in load.results if r[0] >= t_down + 0.05]
    across = [r for r in load.results if r[0] < t_down + 0.05 and r[1] > t_down]
    worst_latency = max(end - start for start, end, _, _ in during)
    # The gateway keeps answering: recovery needs no restart.
    if failure == "stopped":
        server.proc = None
        await asyncio.to_thread(server.start)
    else:
        server.proc.send_signal(signal.SIGCONT)
    t_up = time.monotonic()
    recovered_at = None
    while time.monotonic() < t_up + 10:
        async with http_pool.post(gateway.url(URL), json=chat_body("back"), headers=auth) as resp:
            await resp.read()
            if resp.status == 200:
                recovered_at = time.monotonic()
                break
            assert resp.status == 503
        await asyncio.sleep(0.05)
    redis = Redis.from_url(server.url, socket_timeout=2)
    try:
        held_at_recovery = await redis.hlen(tag + "rsv")

        # Once Redis is back, every hold goes within seconds: the admitted requests'
        # settlements are retried (the last retry comes 7.85 s after the first failure),
        # and a request that was answered 503 must hold nothing. (The holds' expiry is
        # the harness's 60 s: only a leak would still be there after 10 s.)
        async def drained() -> bool:
            return await redis.hlen(tag + "rsv") == 0

        with contextlib.suppress(AssertionError):
            await wait_for(drained, timeout=10, interval=0.2)
        leftover = await hash_text(redis, tag + "rsv")
        after = await counter(redis, month_key)
    finally:
        await redis.aclose()

    record_figures(
        f"redis_{failure}",
        {
            "requests_during_outage": len(during),
            "statuses_during_outage": sorted({s for _, _, s, _ in during}),
            "worst_latency_during_outage_s": round(worst_latency, 3),
            "requests_across_the_stop": len(across),
            "statuses_across_the_stop": sorted({s for _, _, s, _ in across}),
            "worst_latency_across_the_stop_s": round(
                max((e - s for s, e, _, _ in across), default=0.0), 3
            ),
            "readyz_status": readyz_status,
            "readyz_seconds": round(readyz_seconds, 3),
            "recovered_after_restart_s": None
            if recovered_at is None
            else round(recovered_at - t_up, 3),
            "reservations_held_at_recovery": held_at_recovery,
            "reservations_still_held_10s_after_recovery": len(leftover),
        },
    )
    assert len(during) >= 8
    for start, end, status, retry_after in during:
        assert status == 503, (status, start - t_down)
        assert retry_after is not None
        assert int(retry_after) >= 1
        assert end - start < 1.0, end - start
    for _, _, status, _ in across:
        assert status in (200, 503)
    assert readyz_status == 503
    assert readyz_body["checks"]["budget_store"] == "unreachable"
    assert readyz_seconds < 1.0
    assert recovered_at is not None, "the gateway did not recover after Redis came back"
    async with http_pool.get(gateway.url("/readyz")) as resp:
        assert resp.status == 200
    # The usage settled before the outage survived it (AOF; or memory, when frozen).
    for d in range(4):
        assert after[f"u{d}"] >= before[f"u{d}"]
    assert leftover == {}, (
        f"{len(leftover)} reservation(s) still held 10 s after Redis came back: "
        "a reserve whose call timed out (the client got 503) ran when Redis resumed, "
        "and nothing releases it before its expiry"
    )
    assert held_amount(after) == 0


async def test_usage_finished_during_a_long_redis_outage_is_recorded_when_it_returns(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """An answer that ends while Redis is down (a failover, a restart) is settled once
    Redis is back, also after longer than the first quick retries (7.85 s): the
    settle keeps trying while the hold would still be held. Nothing is lost, and
    the hold is given back."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        client, _, creds = await make_gateway(redis_url=server.url)
        auth = bearer(creds.key)
        redis = Redis.from_url(server.url, socket_timeout=2)
        month_key = f"{ptag(creds)}p:{(await window_ids(redis))['month']}"
        await redis.aclose()

        def slow(rec: Recorded) -> Reply:
            reply = default_reply(rec)
            reply.delay_before_headers = 0.5
            return reply

        upstream.default = slow
        answer = asyncio.create_task(client.post(URL, json=chat_body(), headers=auth))
        await wait_for(lambda: _has_requests(upstream), what="the upstream call")
        assert server.proc is not None
        server.proc.terminate()  # the request is reserved and at the upstream
        await asyncio.to_thread(server.proc.wait, 10)
        server.proc = None
        resp = await answer
        assert resp.status == 200
        usage = (await resp.json())["usage"]
        failed_at = time.monotonic()

        await asyncio.sleep(9.0)  # past the last of the quick retries
        await asyncio.to_thread(server.start)
        redis = Redis.from_url(server.url, socket_timeout=2)
        try:

            async def settled() -> bool:
                return (await counter(redis, month_key))["u2"] > 0

            await wait_for(settled, timeout=8.0, what="the settle after the outage", interval=0.2)
            settled_after = time.monotonic() - failed_at
            after = await counter(redis, month_key)
            assert await redis.hlen(ptag(creds) + "rsv") == 0
        finally:
            await redis.aclose()
        assert settled_after > 9.0
        assert after["u0"] == usage["prompt_tokens"]
        assert after["u1"] == usage["completion_tokens"]
        assert after["u2"] == usage["total_tokens"]
        assert held_amount(after) == 0
    finally:
        server.stop()


async def _has_requests(upstream: FakeUpstream) -> bool:
    return bool(upstream.requests)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A private redis-server; requested before ``make_gateway``, it outlives the gateway
    (whose shutdown waits for its background work against the store)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.serial
async def test_on_store_error_allow_admits_unmetered_requests(
    private_redis: RedisServer, make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    server = private_redis
    client, _, creds = await make_gateway(
        redis_url=server.url, gateway={"redis": {"on_store_error": "allow"}}
    )
    auth = bearer(creds.key)
    assert (await client.post(URL, json=chat_body(), headers=auth)).status == 200
    assert server.proc is not None
    server.proc.terminate()
    server.proc.wait(10)
    server.proc = None
    statuses = []
    for stream in (False, True, False, True):
        started = time.monotonic()
        resp = await client.post(URL, json=chat_body(stream=stream), headers=auth)
        await resp.read()
        statuses.append(resp.status)
        assert time.monotonic() - started < 1.0
    assert statuses == [200] * 4
    assert len(upstream.requests) == 5
    text = await scrape(client)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("gateway_unmetered_requests_total", (("project", "alpha"),))] == 4
    assert samples[("gateway_store_errors_total", (("operation", "reserve"),))] >= 4
    assert (await client.get("/readyz")).status == 503
    # Back up (same port), so that the gateway's background work against the store
    # ends before its shutdown.
    server.start()


@pytest.mark.serial
async def test_a_client_leaving_during_the_reserve_leaves_nothing_held(
    private_redis: RedisServer, make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """The client gives up while Redis is slow to run the reserve (the handler is
    cancelled): the reserve still runs when Redis resumes, and the gateway gives that
    hold back at once instead of leaving it for the reservation ttl (false 402s)."""
    server = private_redis
    client, _, creds = await make_gateway(
        redis_url=server.url, gateway={"redis": {"timeout_ms": 3000}}
    )
    redis = Redis.from_url(server.url, socket_timeout=None)
    try:
        month_key = f"{ptag(creds)}p:{(await window_ids(redis))['month']}"
        await pause_writes(redis, 800)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.post(URL, json=chat_body(), headers=bearer(creds.key))

        async def released() -> bool:
            return held_amount(await counter(redis, month_key)) == 0 and not await redis.hlen(
                ptag(creds) + "rsv"
            )

        await asyncio.sleep(1.0)  # Redis resumed; the reserve and its release ran
        await wait_for(released, timeout=3.0, what="the abandoned hold's release")
        assert upstream.requests == []
        resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
        assert resp.status == 200
    finally:
        await redis.aclose()
