"""Budgets through the gateway: real Redis, real fake upstream over TCP.

Numbers used throughout: ``chat_body("Hello")`` has an input bound of
16 (request) + 8 (message) + 4 ("user") + 5 ("Hello") = 33 tokens; the harness
projects have ``max_output_tokens: 100``, so the worst case is 33 + 100 = 133
tokens, costing 33 * 150 + 100 * 600 = 64_950 nano-USD at gpt-4o-mini prices
(0.15 / 0.60 USD per million tokens = 150 / 600 nano-USD per token).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from gateway.budget import keys
from gateway.config import load_config
from gateway.credentials import generate_key
from gateway.http.app import create_app
from tests.support.billing import NOTHING, cost, held, used
from tests.support.harness import (
    STORE_TIMEOUT_FAST,
    Client,
    Credentials,
    GatewayFactory,
    bearer,
    chat_body,
    upstream_override,
    write_config,
)
from tests.support.metrics import metric
from tests.support.redis import counter, project_key, project_keys, wait_released, window_ids
from tests.support.sse import data_frames, read_data_frames
from tests.support.upstream import (
    FakeUpstream,
    Reply,
    openai_completion,
    openai_error,
    openai_stream,
    slow_stream,
)

URL = "/v1/projects/alpha/chat/completions"
INPUT_BOUND, CEILING = 33, 100
WORST_COST = cost(INPUT_BOUND, CEILING)  # 64_950
WORST_USED = used(INPUT_BOUND, CEILING, WORST_COST)


# ----------------------------------------------------------------------------- settled usage


async def test_unary_settles_the_reported_usage_and_cost(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(
        Reply(json=openai_completion(prompt_tokens=30, completion_tokens=57, cached_tokens=16))
    )
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["usage"]["input_tokens"] == 30
    assert body["usage"]["output_tokens"] == 57
    expected_cost = cost(30, 57, cached=16)
    assert expected_cost == 14 * 150 + 16 * 75 + 57 * 600 == 37_500
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == used(30, 57, expected_cost)
    assert await metric(client, "gateway_cost_usd_total", project="alpha") == pytest.approx(
        expected_cost / 1e9
    )
    assert await metric(client, "gateway_tokens_total", project="alpha", type="input") == 30
    assert await metric(client, "gateway_tokens_total", project="alpha", type="output") == 57
    assert await metric(client, "gateway_estimated_usage_total") == 0


async def test_stream_settles_the_reported_usage_and_cost(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(
        Reply(sse=openai_stream(["Hel", "lo", "!"], prompt_tokens=25, completion_tokens=40))
    )
    # The client did not ask for usage: the gateway asks the upstream anyway, keeps it.
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    frames = data_frames(await resp.text())
    assert frames[-1] == "[DONE]"
    assert all(f.get("choices") and "usage" not in f for f in frames[:-1])
    assert upstream.last.json()["stream_options"] == {"include_usage": True}
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == used(25, 40, cost(25, 40))
    assert cost(25, 40) == 27_750

    # Asked for: the usage chunk reaches the client, and is settled the same way.
    upstream.script(Reply(sse=openai_stream(["a"], prompt_tokens=7, completion_tokens=9)))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    frames = data_frames(await resp.text())
    assert frames[-2]["choices"] == []
    assert frames[-2]["usage"]["prompt_tokens"] == 7
    assert frames[-2]["usage"]["completion_tokens"] == 9
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == used(32, 49, cost(25, 40) + cost(7, 9))


# ----------------------------------------------------------------------------- clamp


async def test_upstream_max_tokens_is_clamped_to_the_reserved_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        projects={
            "tight": {"budgets": {"project": {"month": {"total_tokens": 39}}}},
            "pair": {"budgets": {"project": {"month": {"total_tokens": 192}}}},
        }
    )
    auth = bearer(creds.key)

    async def sent(body: dict[str, Any], project: str = "alpha") -> dict[str, Any]:
        resp = await client.post(
            f"/v1/projects/{project}/chat/completions", json=body, headers=auth
        )
        assert resp.status == 200, await resp.text()
        await resp.read()
        forwarded: dict[str, Any] = upstream.last.json()
        return forwarded

    got = await sent(chat_body())
    assert got["max_completion_tokens"] == CEILING
    assert "max_tokens" not in got
    got = await sent(chat_body(max_tokens=5000))  # the provider's name, not the client's
    assert got["max_completion_tokens"] == CEILING
    assert "max_tokens" not in got
    got = await sent(chat_body(max_completion_tokens=5000, stream=True))
    assert got["max_completion_tokens"] == CEILING
    assert "max_tokens" not in got
    got = await sent(chat_body(max_tokens=42, stream=True))
    assert got["max_completion_tokens"] == 42
    got = await sent(chat_body(max_tokens=80, n=2))
    assert got["max_completion_tokens"] == 80
    assert got["n"] == 2

    # The reservation is exactly input bound + that ceiling (per choice, times n).
    resp = await client.post(
        "/v1/projects/tight/chat/completions", json=chat_body(max_tokens=7), headers=auth
    )
    assert resp.status == 402
    refusal = await resp.json()
    assert (refusal["requested"], refusal["limit"], refusal["used"]) == (40, 39, 0)
    got = await sent(chat_body(max_tokens=6), project="tight")
    assert got["max_completion_tokens"] == 6
    resp = await client.post(
        "/v1/projects/pair/chat/completions", json=chat_body(max_tokens=80, n=2), headers=auth
    )
    assert resp.status == 402
    assert (await resp.json())["requested"] == INPUT_BOUND + 160
    got = await sent(chat_body(max_tokens=79, n=2), project="pair")
    assert got["max_completion_tokens"] == 79


# ----------------------------------------------------------------------------- caps per key / user


async def test_per_user_caps_are_separate(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        projects={
            "alpha": {
                "budgets": {
                    "project": {"month": {"total_tokens": 1_000_000}},
                    "per_user": {"day": {"total_tokens": 140}},
                }
            }
        }
    )
    day = (await window_ids(redis))["day"]
    one, two = creds.session(sub="user-1"), creds.session(sub="user-2")
    resp = await client.post(URL, json=chat_body(), headers=bearer(one))
    assert resp.status == 200
    # user-1 used 14 (the fake's 11 + 3): 14 + 133 > 140.
    resp = await client.post(URL, json=chat_body(), headers=bearer(one))
    assert resp.status == 402
    body = await resp.json()
    assert body == {
        "error": "budget_exhausted",
        "reason": "per-user daily total_tokens cap would be exceeded by this request",
        "scope": "user",
        "window": "day",
        "dimension": "total_tokens",
        "limit": 140,
        "used": 14,
        "reserved": 0,
        "requested": 133,
        "resets_at": body["resets_at"],
        # 126 left of 133 asked: 7 fewer output tokens fit.
        "max_tokens_fit": CEILING - 7,
        "message": "per-user daily total_tokens cap would be exceeded by this request: 126"
        " of 140 total tokens left, this request may use 133; a request with max_tokens"
        f" <= {CEILING - 7} fits now; the day window resets at {body['resets_at']}",
    }
    tomorrow = datetime.strptime(day[1:], "%Y%m%d") + timedelta(days=1)
    assert body["resets_at"] == tomorrow.strftime("%Y-%m-%dT00:00:00Z")
    # user-2 and the API key (no end user) are not affected.
    resp = await client.post(URL, json=chat_body(), headers=bearer(two))
    assert resp.status == 200
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    assert len(upstream.requests) == 3

    def user_key(sub: str) -> str:
        return project_key(config, day, part=keys.user_part(sub))

    assert await counter(redis, user_key("user-1")) == used(11, 3, cost(11, 3))
    assert await counter(redis, user_key("user-2")) == used(11, 3, cost(11, 3))
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == used(33, 9, 3 * cost(11, 3))


async def test_per_key_caps_are_separate(
    tmp_path: Path,
    upstream: FakeUpstream,
    redis_url: str,
    redis: Redis,
    aiohttp_client: AiohttpClient,
) -> None:
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        projects={"alpha": {"budgets": {"per_key": {"month": {"total_tokens": 140}}}}},
    )
    second = generate_key()
    (creds.config_dir / "keys").mkdir()
    (creds.config_dir / "keys" / "extra.yaml").write_text(
        yaml.safe_dump(
            {
                "orgs": {
                    "acme": [
                        {
                            "id": "key_second",
                            "prefix": second.prefix,
                            "sha256": second.sha256,
                            "scopes": ["write"],
                        }
                    ]
                }
            }
        )
    )
    config = load_config(creds.config_dir, creds.env)
    client = await aiohttp_client(create_app(config, redis_url))
    month = (await window_ids(redis))["month"]

    assert (await client.post(URL, json=chat_body(), headers=bearer(creds.key))).status == 200
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 402
    body = await resp.json()
    assert body["reason"] == "per-key monthly total_tokens cap would be exceeded by this request"
    assert (body["scope"], body["window"], body["limit"], body["used"], body["reserved"]) == (
        "key",
        "month",
        140,
        14,
        0,
    )
    # Another key of the same org, and a session token, still get through.
    assert (await client.post(URL, json=chat_body(), headers=bearer(second.secret))).status == 200
    assert (await client.post(URL, json=chat_body(), headers=bearer(creds.session()))).status == 200
    assert len(upstream.requests) == 3
    assert await counter(redis, project_key(config, month, part="k:key_main")) == used(
        11, 3, cost(11, 3)
    )
    assert await counter(redis, project_key(config, month, part="k:key_second")) == used(
        11, 3, cost(11, 3)
    )
    assert await counter(redis, project_key(config, month)) == used(33, 9, 3 * cost(11, 3))


# ----------------------------------------------------------------------------- 402


async def test_402_leaves_the_counters_untouched(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        projects={"alpha": {"budgets": {"project": {"month": {"total_tokens": 150}}}}}
    )
    for _ in range(2):  # 133 fits, settles 14; 14 + 133 = 147 fits, settles 14
        assert (await client.post(URL, json=chat_body(), headers=bearer(creds.key))).status == 200
    keys = await project_keys(redis, config)
    before = {key: await redis.hgetall(key) for key in keys}
    for stream in (False, True):
        resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
        assert resp.status == 402
        body = await resp.json()
        assert body["reason"] == "monthly total_tokens cap would be exceeded by this request"
        assert (body["limit"], body["used"], body["reserved"], body["requested"]) == (
            150,
            28,
            0,
            133,
        )
        month = keys[1].rsplit(":", 1)[1]
        year, mon = int(month[1:5]), int(month[5:7])
        assert body["resets_at"] == f"{year + mon // 12:04d}-{mon % 12 + 1:02d}-01T00:00:00Z"
    assert {key: await redis.hgetall(key) for key in keys} == before
    assert await counter(redis, keys[1]) == used(22, 6, 2 * cost(11, 3))
    assert len(upstream.requests) == 2
    assert (
        await metric(client, "gateway_budget_rejections_total", project="alpha", scope="project")
        == 2
    )


# ----------------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_error_before_first_byte_bills_nothing(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, stream: bool
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(Reply(status=500, json=openai_error(500)))
    resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
    assert resp.status == 502
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == NOTHING
    tag = f"{config.gateway.redis.key_prefix}:{{prj:prj_alpha}}:"
    assert await redis.hlen(tag + "rsv") == 0
    assert await redis.zcard(tag + "rsvexp") == 0


@pytest.mark.parametrize("chunks", [0, 1, 3])
async def test_client_disconnect_mid_stream(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, chunks: int
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(slow_stream(80, delay=0.02, slice_size=40, completion_tokens=160))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    frames = await read_data_frames(resp, chunks)
    produced = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames)
    assert produced == "".join(f"w{i:03d} " for i in range(max(chunks - 1, 0)))
    keys = await project_keys(redis, config)
    # While the stream runs, the worst case is held.
    assert await counter(redis, keys[1]) == held(INPUT_BOUND, CEILING, WORST_COST)

    resp.close()
    await upstream.wait_disconnect()
    assert upstream.last.disconnected
    assert not upstream.last.completed
    # No usage ever arrived: the unknown output is billed at the reserved ceiling.
    assert await wait_released(redis, keys[1]) == WORST_USED
    for key in keys:
        assert await counter(redis, key) == WORST_USED
    assert await metric(client, "gateway_estimated_usage_total", project="alpha") == 1
    tag = f"{config.gateway.redis.key_prefix}:{{prj:prj_alpha}}:"
    assert await redis.hlen(tag + "rsv") == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_before_upstream_answers(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, stream: bool
) -> None:
    """The provider got the request and is working on it when the client leaves: no usage
    will ever arrive, so the worst case is billed (never less than the truth)."""
    client, config, creds = await make_gateway()
    reply = openai_stream(["late"]) if stream else None
    upstream.script(
        Reply(sse=reply, json=None if stream else openai_completion(), delay_before_headers=3)
    )
    with pytest.raises(TimeoutError):
        await client.post(
            URL,
            json=chat_body(stream=stream),
            headers=bearer(creds.key),
            timeout=aiohttp.ClientTimeout(total=0.5),
        )
    await upstream.wait_disconnect()
    keys = await project_keys(redis, config)
    assert await wait_released(redis, keys[1]) == WORST_USED
    for key in keys:
        assert await counter(redis, key) == WORST_USED


async def test_upstream_cut_mid_stream(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    raw = openai_stream([f"p{i:02d} " for i in range(20)], prompt_tokens=20, completion_tokens=40)
    events = raw.split(b"\n\n")
    cut = sum(len(e) + 2 for e in events[:4]) + 50  # role chunk + 3 pieces, then 50 bytes
    upstream.script(Reply(sse=raw, cut_after_bytes=cut))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    text = await resp.text()
    assert "event: error" in text
    produced = "".join(
        f["choices"][0]["delta"].get("content") or ""
        for f in data_frames(text)
        if isinstance(f, dict) and f.get("choices")
    )
    assert produced == "p00 p01 p02 "
    assert upstream.last.cut
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == WORST_USED
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="stream_cut")
        == 1
    )


async def test_upstream_idle_timeout_mid_stream(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        gateway=upstream_override(upstream.base_url, idle=0.3)
    )
    raw = openai_stream([f"p{i:02d} " for i in range(20)], prompt_tokens=20, completion_tokens=40)
    events = raw.split(b"\n\n")
    stall = sum(len(e) + 2 for e in events[:3])  # role chunk + 2 pieces, then silence
    upstream.script(Reply(sse=raw, hang_after_bytes=stall))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    async with asyncio.timeout(5):
        text = await resp.text()
    frames = data_frames(text)
    error = next(f for f in frames if isinstance(f, dict) and "error" in f)
    assert error["data"]["code"] == "upstream_timeout"
    await upstream.wait_disconnect()
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == WORST_USED
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="stream_cut")
        == 1
    )


@pytest.mark.parametrize("failure", ["cut", "hang"])
async def test_unary_body_lost_mid_way_bills_the_worst_case(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, failure: str
) -> None:
    """The provider was already sending its completed answer: it billed the request, we
    never saw the usage, so the reservation is billed in full."""
    client, config, creds = await make_gateway(
        gateway=upstream_override(upstream.base_url, idle=0.3)
    )
    completion = openai_completion(prompt_tokens=20, completion_tokens=40)
    if failure == "cut":
        upstream.script(Reply(json=completion, cut_after_bytes=60))
    else:
        upstream.script(Reply(json=completion, hang_after_bytes=60))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status in (502, 504)
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == WORST_USED
    assert await metric(client, "gateway_estimated_usage_total", project="alpha") == 1


async def test_stream_without_usage_bills_the_output_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """Finished normally, but the usage the gateway asked for never came: the visible
    text (11 bytes) bounds nothing the provider generated unseen (reasoning tokens), so
    input is billed at its bound and output at the reserved ceiling, and the client's
    usage chunk says so."""
    client, config, creds = await make_gateway()
    upstream.script(Reply(sse=openai_stream(["Hello", " there"], include_usage=False)))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    frames = data_frames(await resp.text())
    assert upstream.last.json()["stream_options"] == {"include_usage": True}
    assert frames[-2]["usage"]["prompt_tokens"] == INPUT_BOUND
    assert frames[-2]["usage"]["completion_tokens"] == CEILING
    for key in await project_keys(redis, config):
        assert await counter(redis, key) == WORST_USED
    assert (
        await metric(client, "gateway_estimated_usage_total", project="alpha", reason="no_usage")
        == 1
    )


class SlowRedisProxy:
    """A TCP proxy in front of the real Redis: commands reach Redis at once, replies
    can be held back ``delay`` seconds (a latency spike: the script runs, the answer is late)."""

    def __init__(self, redis_url: str) -> None:
        target = URL_RE.match(redis_url)
        assert target is not None, redis_url
        self.host, self.port = target.group(1), int(target.group(2))
        self.delay = 0.0
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listen_port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, late: bool) -> None:
        try:
            while data := await src.read(65536):
                if late and self.delay:
                    await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pump(reader, up_writer, late=False), self._pump(up_reader, writer, late=True)
        )

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


URL_RE = re.compile(r"^redis://([^:/]+):(\d+)")


async def test_reserve_answered_too_late_does_not_hold_budget_for_the_ttl(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, redis_url: str
) -> None:
    """Redis ran the reserve script but its answer came after the gateway's timeout: the
    client got 503 and nothing was sent upstream, so once Redis answers again the hold
    must go away, not block the budget for the whole reservation TTL (60 s here, 900 s
    by default) and turn the next requests into false 402s."""
    proxy = SlowRedisProxy(redis_url)
    await proxy.start()
    try:
        client, config, creds = await make_gateway(
            redis_url=proxy.url,
            projects={"alpha": {"budgets": {"project": {"month": {"total_tokens": 200}}}}},
            gateway=STORE_TIMEOUT_FAST,
        )
        assert config.gateway.redis.timeout_ms == 300
        assert (await client.post(URL, json=chat_body(), headers=bearer(creds.key))).status == 200
        keys = await project_keys(redis, config)
        assert await counter(redis, keys[1]) == used(11, 3, cost(11, 3))

        proxy.delay = 1.0  # the script runs at once, its answer comes after 1 s
        resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
        assert resp.status == 503
        assert len(upstream.requests) == 1
        proxy.delay = 0.0  # Redis answers in time again

        assert await wait_released(redis, keys[1], timeout=10) == used(11, 3, cost(11, 3))
        # And the budget is usable again: 14 used + 133 fits under 200.
        resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
        assert resp.status == 200, await resp.text()
    finally:
        await proxy.close()


# ----------------------------------------------------------------------------- input bounds

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
FILE = {"type": "file", "file": {"file_id": "file-abc123"}}


def _parts(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, *parts]}]}


async def _requested(client: Client, creds: Credentials, body: dict[str, Any]) -> int:
    """The worst case a request asks to reserve, read off the 402 of a 1-token cap."""
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 402, await resp.text()
    return int((await resp.json())["requested"])


TINY_CAP = {"alpha": {"budgets": {"project": {"day": {"total_tokens": 1}}}}}


async def test_an_image_reserves_what_it_may_cost_on_the_routes_model(
    make_gateway: GatewayFactory,
) -> None:
    """gpt-4o-mini charges up to 48,169 tokens for one image, twenty times gpt-4o: a
    fixed per-image bound below that let one request overshoot a cap. The model's
    image_tokens sets it; without one, the default is the most any known model charges."""
    client, _, creds = await make_gateway(projects=TINY_CAP)
    without = await _requested(client, creds, _parts())
    assert await _requested(client, creds, _parts(IMAGE, IMAGE)) - without == 2 * 48_169
    mini = {"input": "0.15", "output": "0.60", "image_tokens": 30_000}
    client, _, creds = await make_gateway(
        projects=TINY_CAP, gateway={"prices": {"gpt-4o-mini": mini}}
    )
    assert await _requested(client, creds, _parts(IMAGE)) - without == 30_000


async def test_a_file_part_needs_the_models_context_window(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """Nothing but the context window bounds a document's tokens: without it configured
    the request is refused (422, naming the part) before anything is reserved or sent;
    with it, the file reserves the window (the whole prompt is capped by it too)."""
    client, _, creds = await make_gateway(projects=TINY_CAP)
    resp = await client.post(URL, json=_parts(FILE), headers=bearer(creds.key))
    body = await resp.json()
    assert resp.status == 422, body
    assert body["param"] == "messages[0].content[1]"
    assert "context_tokens" in body["message"]
    assert upstream.requests == []
    mini = {"input": "0.15", "output": "0.60", "context_tokens": 128_000}
    client, _, creds = await make_gateway(
        projects=TINY_CAP, gateway={"prices": {"gpt-4o-mini": mini}}
    )
    assert await _requested(client, creds, _parts(FILE)) == 128_000 + CEILING
