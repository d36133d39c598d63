"""The usage ledger, rate limits, org caps, window edges and the usage report.

Real Redis, in-process gateways (pytest-aiohttp on a real socket), the fake upstream
over TCP. Numbers: ``chat_body("Hello")`` has an input bound of 16 + 8 + 4 + 5 = 33
tokens; the harness projects have ``max_output_tokens: 100``, so a request's worst
case is 133 tokens (64_950 nano-USD at gpt-4o-mini prices, 150 / 600 nano-USD per
input / output token). The fake's default reply reports 11 + 3 = 14 tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from gateway import cli
from gateway.budget import (
    Amounts,
    BudgetExceeded,
    BudgetStore,
    org_counters,
    project_counters,
)
from gateway.config import Config, load_config, org_caps
from gateway.credentials import generate_key
from gateway.http.app import create_app
from gateway.usage import Usage, cost_nano
from tests.support.billing import cost
from tests.support.clock import ms
from tests.support.harness import (
    Client,
    Credentials,
    GatewayFactory,
    add_api_key,
    bearer,
    chat_body,
    edit_gateway_yaml,
    write_config,
)
from tests.support.redis import (
    RedisServer,
    counter,
    get_int,
    ledger_events,
    parse_event_text,
    stream_entries,
    tag,
    window_ids,
)
from tests.support.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    default_reply,
    openai_completion,
    openai_error,
    openai_stream,
    slow_stream,
)
from tests.support.wait import wait_for

URL = "/v1/projects/alpha/chat/completions"
INPUT_BOUND, CEILING = 33, 100
WORST = INPUT_BOUND + CEILING  # 133
WORST_COST = cost(INPUT_BOUND, CEILING)  # 64_950
SMALL = 11 + 3  # the fake's default usage
SMALL_COST = cost(11, 3)  # 3_450


def error_event_stream() -> bytes:
    """Three content chunks, then an OpenAI in-band error frame (no finish, no usage)."""
    events = openai_stream(["a", "b", "c", "d", "e"], prompt_tokens=20).split(b"\n\n")
    error = {"error": {"message": "The server is overloaded", "type": "server_error"}}
    return b"\n\n".join(events[:4]) + b"\n\ndata: " + json.dumps(error).encode() + b"\n\n"


# ``build(org_budgets=..., **write_config overrides)``: a gateway, its config and
# credentials, and the secret of org acme's second write key ("key_two").
Build = Callable[..., Awaitable[tuple[Client, Config, Credentials, str]]]


@pytest.fixture
def build(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, aiohttp_client: AiohttpClient
) -> Build:
    """Like ``make_gateway``, plus what needs the files edited before loading: org caps
    (``org_budgets``) and a second write key of org acme (``key_two``, its secret returned)."""
    count = 0

    async def factory(
        *, org_budgets: dict[str, Any] | None = None, **overrides: Any
    ) -> tuple[Client, Config, Credentials, str]:
        nonlocal count
        count += 1
        url = overrides.pop("redis_url", redis_url)
        creds = write_config(tmp_path / f"built{count}", upstream.base_url, url, **overrides)
        two = generate_key()
        add_api_key(creds, "key_two", two.prefix, two.sha256, ["write"])
        if org_budgets is not None:

            def change(data: dict[str, Any]) -> None:
                data["orgs"]["acme"]["budgets"] = org_budgets

            edit_gateway_yaml(creds, change)
        config = load_config(creds.config_dir, creds.env)
        client = await aiohttp_client(
            create_app(config, url), server_kwargs={"handler_cancellation": True}
        )
        return client, config, creds, two.secret

    return factory


# ============================================================================== ledger


async def test_ledger_has_exactly_one_event_per_admitted_request(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        projects={
            "alpha": {
                "budgets": {
                    "project": {"month": {"total_tokens": 1_000_000}},
                    "per_user": {"day": {"total_tokens": 1_000}},
                }
            }
        }
    )
    prefix = config.gateway.redis.key_prefix
    key_auth, user_auth = bearer(creds.key), bearer(creds.session(sub="u-ledger"))
    run = uuid.uuid4().hex[:8]

    def rid(name: str) -> str:
        return f"ledger-{name}-{run}"

    gateway_ids: dict[str, str] = {}

    async def post(name: str, body: dict[str, Any], auth: dict[str, str]) -> tuple[int, str]:
        resp = await client.post(URL, json=body, headers={**auth, "X-Request-Id": rid(name)})
        text = await resp.text()
        assert resp.headers["X-Client-Request-Id"] == rid(name)
        gateway_ids[name] = resp.headers["X-Request-Id"]
        return resp.status, text

    # 1. unary, API key, cached input reported.
    upstream.script(
        Reply(json=openai_completion(prompt_tokens=30, completion_tokens=57, cached_tokens=16))
    )
    assert (await post("unary", chat_body(), key_auth))[0] == 200
    # 2. stream, session user, cached and reasoning tokens reported.
    upstream.script(
        Reply(
            sse=openai_stream(
                ["x", "y"],
                prompt_tokens=25,
                completion_tokens=40,
                cached_tokens=8,
                reasoning_tokens=12,
            )
        )
    )
    assert (await post("stream", chat_body(stream=True), user_auth))[0] == 200
    # 3. another alias: the event names the alias and the upstream model (gpt-4o prices).
    upstream.script(Reply(json=openai_completion(prompt_tokens=11, completion_tokens=3)))
    assert (await post("smart", chat_body(model="smart"), key_auth))[0] == 200
    # 4. upstream error before the first byte: 502, billed nothing, still one event.
    upstream.script(Reply(status=500, json=openai_error(500)))
    assert (await post("failed", chat_body(stream=True), key_auth))[0] == 502
    # 5. upstream cut mid-stream.
    raw = openai_stream([f"p{i:02d} " for i in range(20)], prompt_tokens=20, completion_tokens=40)
    cut = sum(len(e) + 2 for e in raw.split(b"\n\n")[:4]) + 50
    upstream.script(Reply(sse=raw, cut_after_bytes=cut))
    status, text = await post("cut", chat_body(stream=True), key_auth)
    assert status == 200
    assert "event: error" in text
    # 6. an error event in the middle of the upstream stream.
    upstream.script(Reply(sse=error_event_stream()))
    status, text = await post("error-event", chat_body(stream=True), key_auth)
    assert status == 200
    assert "event: error" in text
    # 7. the client disconnects mid-stream.
    upstream.script(slow_stream(60, slice_size=40))
    resp = await client.post(
        URL, json=chat_body(stream=True), headers={**key_auth, "X-Request-Id": rid("gone")}
    )
    assert resp.status == 200
    assert resp.headers["X-Client-Request-Id"] == rid("gone")
    await resp.content.readline()
    resp.close()
    # 8. refused (402: the per-user day cap is 1000 tokens): not admitted, no event.
    status, text = await post("refused", chat_body("z" * 1200), user_auth)
    assert status == 402, text
    # 9. no X-Request-Id from the client: the event's client_request_id is null. (The
    # event's request_id is always the gateway's own: the X-Request-Id it answered.)
    resp = await client.post(URL, json=chat_body(), headers=key_auth)
    assert resp.status == 200
    own_id = resp.headers["X-Request-Id"]
    await resp.read()

    admitted_names = ("unary", "stream", "smart", "failed", "cut", "error-event")
    admitted = {rid(n) for n in admitted_names}
    admitted |= {rid("gone"), own_id}

    def named(e: dict[str, Any]) -> str:
        """An event by the client's id, or the gateway's when the client sent none."""
        return str(e["client_request_id"] or e["request_id"])

    async def all_settled() -> bool:
        return {named(e) for e in await ledger_events(redis, prefix, as_text=True)} >= admitted

    await wait_for(all_settled, what="the ledger events of every admitted request")
    await asyncio.sleep(0.2)  # a duplicate event would show up by now
    events = await ledger_events(redis, prefix, as_text=True)
    ids = [named(e) for e in events]
    assert sorted(ids) == sorted(admitted), ids  # exactly one each; none for the 402
    by_id = {named(e): e for e in events}
    assert len({e["request_id"] for e in events}) == len(events)
    for name, gateway_id in gateway_ids.items():
        if name in admitted_names:
            assert by_id[rid(name)]["request_id"] == gateway_id

    now = time.time()
    for event in events:
        assert set(event) >= {
            "request_id", "client_request_id", "ts", "org", "project", "key_id", "user", "model", "provider",
            "upstream_model", "status", "stream", "outcome", "input_tokens", "output_tokens",
            "cached_input_tokens", "reasoning_tokens", "cost_nano_usd", "estimated",
            "duration_ms", "upstream_ms", "settled",
        }  # fmt: skip
        assert (event["org"], event["project"], event["provider"]) == ("acme", "alpha", "upstream")
        assert now - 60 < float(event["ts"]) <= now + 1
        duration, upstream_ms = float(event["duration_ms"]), float(event["upstream_ms"])
        assert 0 <= upstream_ms <= duration < 30_000
        assert event["settled"] == "1"  # the reservation was still held when settled

    def tokens(e: dict[str, str]) -> tuple[int, ...]:
        return tuple(
            int(e[f])
            for f in (
                "input_tokens",
                "output_tokens",
                "cached_input_tokens",
                "reasoning_tokens",
                "cost_nano_usd",
            )
        )

    e = by_id[rid("unary")]
    assert (e["key_id"], e["user"], e["model"], e["upstream_model"]) == (
        "key_main",
        "",
        "default",
        "gpt-4o-mini",
    )
    assert (e["status"], e["stream"], e["estimated"]) == ("200", "0", "0")
    assert tokens(e) == (30, 57, 16, 0, cost(30, 57, cached=16))

    e = by_id[rid("stream")]
    assert (e["key_id"], e["user"], e["stream"], e["outcome"]) == ("", "u-ledger", "1", "completed")
    assert tokens(e) == (25, 40, 8, 12, cost(25, 40, cached=8))
    assert e["estimated"] == "0"

    e = by_id[rid("smart")]
    assert (e["model"], e["upstream_model"]) == ("smart", "gpt-4o")
    assert tokens(e) == (11, 3, 0, 0, 11 * 2_500 + 3 * 10_000)  # gpt-4o: 2.50 / 10.00 USD

    e = by_id[rid("failed")]
    assert (e["status"], e["estimated"]) == ("502", "0")
    assert tokens(e) == (0, 0, 0, 0, 0)

    for name in ("cut", "error-event"):
        e = by_id[rid(name)]
        assert (e["status"], e["outcome"], e["estimated"]) == ("200", "upstream_error", "1"), e
        assert tokens(e) == (INPUT_BOUND, CEILING, 0, 0, WORST_COST), e

    e = by_id[rid("gone")]
    assert e["outcome"] == "client_disconnected"
    assert e["status"] in ("200", "499")
    assert e["estimated"] == "1"
    assert tokens(e) == (INPUT_BOUND, CEILING, 0, 0, WORST_COST)

    assert tokens(by_id[own_id]) == (11, 3, 0, 0, SMALL_COST)

    # The events add up to the counters, in every window.
    totals = [sum(int(e[f]) for e in events) for f in ("input_tokens", "output_tokens")]
    total_cost = sum(int(e["cost_nano_usd"]) for e in events)
    ids_now = await window_ids(redis)
    for window_id in ids_now.values():
        state = await counter(redis, f"{tag(prefix)}p:{window_id}")
        assert state == {
            "u0": totals[0], "u1": totals[1], "u2": sum(totals), "u3": total_cost,
            "r0": 0, "r1": 0, "r2": 0, "r3": 0,
        }, window_id  # fmt: skip
    user_key = f"{tag(prefix)}u:{hashlib.sha256(b'u-ledger').hexdigest()[:24]}:{ids_now['day']}"
    assert (await counter(redis, user_key))["u2"] == 25 + 40
    assert await redis.hlen(tag(prefix) + "rsv") == 0


async def test_ledger_max_events_bounds_the_stream(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis_url: str
) -> None:
    """``MAXLEN ~``: trimmed by whole stream nodes, so the bound is approximate; a private
    Redis with small nodes makes the trimming visible with few requests."""
    private = RedisServer("--stream-node-max-entries", "8")
    private.start()
    try:
        client, config, creds = await make_gateway(
            redis_url=private.url, gateway={"ledger": {"max_events": 20}}
        )
        redis = Redis.from_url(private.url)
        try:
            sent = 0
            for _ in range(6):
                results = await asyncio.gather(
                    *(
                        client.post(URL, json=chat_body(), headers=bearer(creds.key))
                        for _ in range(10)
                    )
                )
                for resp in results:
                    assert resp.status == 200
                    await resp.read()
                sent += len(results)
            prefix = config.gateway.redis.key_prefix
            length = await redis.xlen(tag(prefix) + "ledger")
            assert 20 <= length <= 20 + 8, length
            # The counters still count every request; the newest events are kept.
            state = await counter(redis, f"{tag(prefix)}p:all")
            assert state["u2"] == sent * SMALL
            newest = await stream_entries(redis, tag(prefix) + "ledger", newest=1)
            assert float(parse_event_text(newest[0][1])["ts"]) > time.time() - 30
        finally:
            await redis.aclose()
    finally:
        private.stop()


async def test_ledger_disabled_with_zero_max_events(
    make_gateway: GatewayFactory, redis: Redis
) -> None:
    client, config, creds = await make_gateway(gateway={"ledger": {"max_events": 0}})
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    prefix = config.gateway.redis.key_prefix
    assert await redis.exists(tag(prefix) + "ledger") == 0
    assert (await counter(redis, f"{tag(prefix)}p:all"))["u2"] == SMALL


# ============================================================================== rate limits


def _rate_limited_body(status: int, headers: Any, body: Any) -> str:
    assert status == 429
    assert set(body) == {"detail", "message"}, body
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 60
    return str(body["detail"])


async def assert_project_holds_only(redis: Redis, prefix: str, n: int) -> None:
    """In every window, the project's counter holds n settled default answers (11 in,
    3 out) and nothing reserved."""
    settled = {"u0": 11 * n, "u1": 3 * n, "u2": n * SMALL, "u3": n * SMALL_COST}
    for window_id in (await window_ids(redis)).values():
        state = await counter(redis, f"{tag(prefix)}p:{window_id}")
        assert state == {**settled, "r0": 0, "r1": 0, "r2": 0, "r3": 0}


def assert_refusals(results: list[tuple[int, Any, Any]], detail: str) -> None:
    """Every 429 of a burst is the documented one, with this reason."""
    for status, headers, body in results:
        if status == 429:
            assert _rate_limited_body(status, headers, body) == detail


async def _burst(
    client: Client, auth: dict[str, str], n: int, **body: Any
) -> list[tuple[int, Any, Any]]:
    async def one() -> tuple[int, Any, Any]:
        resp = await client.post(URL, json=chat_body(**body), headers=auth)
        payload = await resp.json() if resp.status != 200 or not body.get("stream") else None
        if payload is None:
            await resp.read()
        return resp.status, resp.headers, payload

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_requests_per_minute_burst_gets_429_and_charges_nothing(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        projects={"alpha": {"rate_limits": {"requests_per_minute": 5}}},
    )
    prefix = config.gateway.redis.key_prefix
    results = await _burst(client, bearer(creds.key), 8)
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200] * 5 + [429] * 3
    assert_refusals(results, "requests per minute limit (5) reached")
    assert len(upstream.requests) == 5
    # The 429s reserved and charged nothing: the counters hold the 5 admitted requests.
    await assert_project_holds_only(redis, prefix, 5)
    assert await redis.hlen(tag(prefix) + "rsv") == 0
    # Still limited right after (the limit is per minute, not per burst).
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 429


async def test_per_key_limits_are_independent_and_a_429_holds_nothing(
    build: Build, upstream: FakeUpstream, redis: Redis
) -> None:
    limits = {"requests_per_minute": 4, "per_key": {"requests_per_minute": 2}}
    client, config, creds, two = await build(
        projects={"alpha": {"rate_limits": limits}},
        org_budgets={"month": {"total_tokens": 1_000_000}},
    )
    prefix = config.gateway.redis.key_prefix
    results = await _burst(client, bearer(creds.key), 4)
    assert sorted(s for s, _, _ in results) == [200, 200, 429, 429]
    assert_refusals(results, "per-key requests per minute limit (2) reached")
    # The other key has its own allowance, and key one's refusals took nothing from the
    # project's limit (all or nothing): the project still has 2 of its 4.
    results = await _burst(client, bearer(two), 2)
    assert [s for s, _, _ in results] == [200, 200]
    resp = await client.post(URL, json=chat_body(), headers=bearer(two))
    detail = _rate_limited_body(resp.status, resp.headers, await resp.json())
    assert detail == "requests per minute limit (4) reached"
    assert len(upstream.requests) == 4
    # Neither the project's counters nor the org's kept anything of the refused requests.
    ids = await window_ids(redis)
    four = {"u0": 44, "u1": 12, "u2": 4 * SMALL, "u3": 4 * SMALL_COST}
    zero = {"r0": 0, "r1": 0, "r2": 0, "r3": 0}
    for window_id in ids.values():
        assert await counter(redis, f"{tag(prefix)}p:{window_id}") == {**four, **zero}
    org_month = f"{tag(prefix, 'acme', 'org')}o:{ids['month']}"
    assert await counter(redis, org_month) == {**four, **zero}
    assert await redis.hlen(tag(prefix, "acme", "org") + "rsv") == 0
    assert await redis.hlen(tag(prefix) + "rsv") == 0


async def test_tokens_per_minute_charges_the_worst_case_and_refunds_at_settle(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """tokens_per_minute 300: the worst case (133) alone would let 2 requests through per
    minute; with the unused part given back at settle (each uses 14), many more fit."""
    client, config, creds = await make_gateway(
        projects={"alpha": {"rate_limits": {"tokens_per_minute": 300}}}
    )
    prefix = config.gateway.redis.key_prefix
    us_per_token = 60_000_000 // 300
    auth = bearer(creds.key)
    assert (await client.post(URL, json=chat_body(), headers=auth)).status == 200
    tat = await get_int(redis, tag(prefix) + "rl:tpm")
    seconds, micros = await redis.time()
    ahead = tat - (seconds * 1_000_000 + micros)
    # Charged 133 tokens at reserve, 119 given back at settle: 14 tokens' worth remain.
    assert 0 < ahead <= SMALL * us_per_token, ahead / us_per_token

    for _ in range(7):  # 2 would fit on worst cases alone (3 * 133 > 300)
        assert (await client.post(URL, json=chat_body(), headers=auth)).status == 200

    # While requests run, their worst case is held: of 4 concurrent ones, one fits
    # (8 * 14 = 112 used, 112 + 133 <= 300 < 112 + 2 * 133).
    def slow(rec: Recorded) -> Reply:
        reply = default_reply(rec)
        reply.delay_before_headers = 0.5
        return reply

    upstream.default = slow
    results = await _burst(client, auth, 4, stream=True)
    assert sorted(s for s, _, _ in results) == [200, 429, 429, 429]
    assert_refusals(results, "tokens per minute limit (300) reached")
    assert len(upstream.requests) == 9
    await assert_project_holds_only(redis, prefix, 9)


async def test_a_request_over_the_tokens_per_minute_limit_by_itself_gets_no_retry_after(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """tokens_per_minute 100 < the worst case 133: waiting can never admit it, so the 429
    says why and carries no Retry-After; a lower max_tokens fits."""
    client, config, creds = await make_gateway(
        projects={"alpha": {"rate_limits": {"tokens_per_minute": 100}}}
    )
    prefix = config.gateway.redis.key_prefix
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 429
    assert "Retry-After" not in resp.headers
    detail = (
        f"this request's worst case ({WORST} tokens) exceeds the tokens per minute"
        " limit (100) by itself: lower max_tokens or shorten the input"
    )
    assert await resp.json() == {"detail": detail, "message": detail}
    assert upstream.requests == []
    assert await redis.exists(tag(prefix) + "rl:tpm") == 0
    resp = await client.post(URL, json=chat_body(max_tokens=50), headers=bearer(creds.key))
    assert resp.status == 200
    await assert_project_holds_only(redis, prefix, 1)


# ============================================================================== org caps


async def test_org_cap_refuses_with_scope_org(
    build: Build, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds, _ = await build(org_budgets={"day": {"total_tokens": 150}})
    prefix = config.gateway.redis.key_prefix
    ids = await window_ids(redis)
    auth = bearer(creds.key)
    # The org's counter adds up its projects: 133 fits, settles 14; 14 + 133 fits on beta.
    assert (await client.post(URL, json=chat_body(), headers=auth)).status == 200
    beta = "/v1/projects/beta/chat/completions"
    assert (await client.post(beta, json=chat_body(), headers=auth)).status == 200
    org_day = f"{tag(prefix, 'acme', 'org')}o:{ids['day']}"
    settled = {"u0": 22, "u1": 6, "u2": 28, "u3": 2 * SMALL_COST}
    zero = {"r0": 0, "r1": 0, "r2": 0, "r3": 0}
    assert await counter(redis, org_day) == {**settled, **zero}
    before = await counter(redis, f"{tag(prefix)}p:{ids['month']}")

    resp = await client.post(URL, json=chat_body(), headers=auth)
    assert resp.status == 402, await resp.text()
    body = await resp.json()
    tomorrow = datetime.strptime(ids["day"][1:], "%Y%m%d") + timedelta(days=1)
    assert body["error"] == "budget_exhausted"
    assert (body["scope"], body["window"], body["dimension"]) == ("org", "day", "total_tokens")
    assert (body["limit"], body["used"], body["reserved"], body["requested"]) == (150, 28, 0, 133)
    assert body["resets_at"] == tomorrow.strftime("%Y-%m-%dT00:00:00Z")
    assert "daily total_tokens cap" in body["reason"]
    # Refused at the org step: nothing was held anywhere, nothing went upstream.
    assert await counter(redis, org_day) == {**settled, **zero}
    assert await counter(redis, f"{tag(prefix)}p:{ids['month']}") == before
    assert len(upstream.requests) == 2
    # Another org is not affected.
    gamma = "/v1/projects/gamma/chat/completions"
    resp = await client.post(gamma, json=chat_body(), headers=bearer(creds.other_org_key))
    assert resp.status == 200


async def test_project_refusal_undoes_the_org_reservation(
    build: Build, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds, _ = await build(
        projects={"alpha": {"budgets": {"project": {"month": {"total_tokens": 140}}}}},
        org_budgets={"month": {"total_tokens": 1_000_000, "cost_usd": "5"}},
    )
    prefix = config.gateway.redis.key_prefix
    ids = await window_ids(redis)
    auth = bearer(creds.key)
    assert (await client.post(URL, json=chat_body(), headers=auth)).status == 200
    # The org step admits (its cap is far), then the project step refuses: 14 + 133 > 140.
    for stream in (False, True):
        resp = await client.post(URL, json=chat_body(stream=stream), headers=auth)
        assert resp.status == 402
        body = await resp.json()
        assert (body["scope"], body["limit"], body["used"]) == ("project", 140, 14)
    org_month = f"{tag(prefix, 'acme', 'org')}o:{ids['month']}"
    assert await counter(redis, org_month) == {
        "u0": 11, "u1": 3, "u2": SMALL, "u3": SMALL_COST, "r0": 0, "r1": 0, "r2": 0, "r3": 0,
    }  # fmt: skip
    assert await redis.hlen(tag(prefix, "acme", "org") + "rsv") == 0
    assert await redis.zcard(tag(prefix, "acme", "org") + "rsvexp") == 0
    assert len(upstream.requests) == 1


# ============================================================================== windows


async def test_month_end_request_settled_after_midnight_stays_in_the_old_windows(
    tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    """Admitted at 23:59:59.900 on the last day of a month (here a leap day), settled at
    00:00:00.300: charged to the old day and month on every scope (project, key, user,
    org); the new day and month start empty."""
    caps = {"day": {"total_tokens": 1_000}, "month": {"total_tokens": 10_000}}
    creds = write_config(
        tmp_path / "cfg",
        "http://127.0.0.1:9/v1",
        redis_url,
        projects={"alpha": {"budgets": {"project": caps, "per_key": caps, "per_user": caps}}},
    )
    edit_gateway_yaml(creds, lambda data: data["orgs"]["acme"].update(budgets=caps))
    config = load_config(creds.config_dir, creds.env)
    project, org = config.projects["alpha"], config.gateway.orgs["acme"]
    store = BudgetStore(redis, "t" + uuid.uuid4().hex[:12], 0.5, 60)
    price = config.gateway.prices["gpt-4o-mini"]
    worst = Amounts(33, 100, cost_nano(Usage(33, 100), price))
    actual = Amounts(30, 90, cost_nano(Usage(30, 90), price))
    user = hashlib.sha256(b"user-9").hexdigest()[:24]
    before, after = ms("2028-02-29T23:59:59.900"), ms("2028-03-01T00:00:00.300")

    org_rsv = await store.reserve(
        "acme", "o1", org_counters(org_caps(org)), worst, now_ms=before, kind="org"
    )
    counters = project_counters(project, "key_main", "user-9")
    rsv = await store.reserve(project.id, "p1", counters, worst, now_ms=before)
    ptag, otag = store.tag(project.id), store.tag("acme", "org")
    old = [
        f"{ptag}{s}:{w}" for s in ("p", "k:key_main", f"u:{user}") for w in ("d20280229", "m202802")
    ]
    old += [f"{otag}o:d20280229", f"{otag}o:m202802"]
    assert set(rsv.counter_keys) | set(org_rsv.counter_keys) == {*old, f"{ptag}p:all"}

    assert await store.settle(rsv, actual, now_ms=after) is True
    assert await store.settle(org_rsv, actual, now_ms=after) is True
    charged = {"u0": 30, "u1": 90, "u2": 120, "u3": actual.cost_nano}
    zero = {"r0": 0, "r1": 0, "r2": 0, "r3": 0}
    for key in [*old, f"{ptag}p:all"]:
        assert await counter(redis, key) == {**charged, **zero}, key
    new = [
        f"{ptag}{s}:{w}" for s in ("p", "k:key_main", f"u:{user}") for w in ("d20280301", "m202803")
    ]
    new += [f"{otag}o:d20280301", f"{otag}o:m202803"]
    assert await redis.exists(*new) == 0

    # A settle retried after midnight changes nothing (the done marker).
    assert await store.settle(rsv, actual, now_ms=after + 50) is False
    assert await counter(redis, f"{ptag}p:d20280229") == {**charged, **zero}

    # The next request lands on the new windows, which start empty; lifetime carries on.
    # The old day is nearly full for a big request: 120 + 900 > 1000 ...
    big = Amounts(800, 100, cost_nano(Usage(800, 100), price))
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "p2", counters, big, now_ms=before + 50)
    assert (info.value.refusal.window_id, info.value.refusal.used) == ("d20280229", 120)
    # ... but after midnight the same request fits, on counters holding only itself.
    rsv2 = await store.reserve(project.id, "p3", counters, big, now_ms=after + 100)
    org2 = await store.reserve(
        "acme", "o3", org_counters(org_caps(org)), big, now_ms=after + 100, kind="org"
    )
    assert set(rsv2.counter_keys) | set(org2.counter_keys) == {*new, f"{ptag}p:all"}
    held = {"r0": 800, "r1": 100, "r2": 900, "r3": big.cost_nano}
    for key in new:
        assert await counter(redis, key) == {"u0": 0, "u1": 0, "u2": 0, "u3": 0, **held}, key
    assert await counter(redis, f"{ptag}p:all") == {**charged, **held}


# ============================================================================== usage report


async def test_usage_endpoint_and_cli_report_the_counters(
    build: Build, upstream: FakeUpstream, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    client, config, creds, _ = await build(
        projects={
            "alpha": {
                "budgets": {
                    "project": {
                        "day": {"input_tokens": 50_000},
                        "month": {"total_tokens": 1_000_000},
                        "lifetime": {"cost_usd": "2.5"},
                    },
                    "per_key": {"month": {"total_tokens": 100_000}},
                    "per_user": {"day": {"output_tokens": 20_000}},
                }
            }
        },
        org_budgets={"month": {"total_tokens": 5_000_000, "cost_usd": "10"}},
    )
    prefix = config.gateway.redis.key_prefix
    key_auth, user_auth = bearer(creds.key), bearer(creds.session(sub="u-report"))
    upstream.script(
        Reply(json=openai_completion(prompt_tokens=30, completion_tokens=57, cached_tokens=16)),
        Reply(json=openai_completion(prompt_tokens=21, completion_tokens=8)),
    )
    assert (await client.post(URL, json=chat_body(), headers=key_auth)).status == 200
    assert (await client.post(URL, json=chat_body(), headers=user_auth)).status == 200
    # One request in flight, so that "reserved" is not zero.
    upstream.script(slow_stream(40, slice_size=40))
    held = await client.post(URL, json=chat_body(stream=True), headers=key_auth)
    assert held.status == 200
    ids = await window_ids(redis)

    async def reserving() -> bool:
        return (await counter(redis, f"{tag(prefix)}p:{ids['month']}"))["r2"] == WORST

    await wait_for(reserving, what="the stream's reservation")

    async def report(auth: dict[str, str]) -> dict[str, Any]:
        resp = await client.get("/v1/projects/alpha/usage", headers=auth)
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    by_read_key = await report(bearer(creds.read_key))
    by_key = await report(key_auth)

    async def run_cli(*extra: str) -> dict[str, Any]:
        capsys.readouterr()
        argv = ["usage", "--project", "alpha", "--config", str(creds.config_dir), "--json"]
        code = await asyncio.to_thread(cli.main, [*argv, *extra])
        out = capsys.readouterr().out
        assert code == 0, out
        parsed: dict[str, Any] = json.loads(out)
        return parsed

    cli_key = await run_cli("--key", "key_main")
    cli_user = await run_cli("--user", "u-report")

    assert cli_key == by_key  # the same numbers, from the same counters
    caps = {
        ("project", "day"): {"input_tokens": 50_000},
        ("project", "month"): {"total_tokens": 1_000_000},
        ("project", "lifetime"): {"cost_nano_usd": 2_500_000_000},
        ("key", "month"): {"total_tokens": 100_000},
        ("user", "day"): {"output_tokens": 20_000},
        ("org", "month"): {"total_tokens": 5_000_000, "cost_nano_usd": 10_000_000_000},
    }
    tomorrow = datetime.strptime(ids["day"][1:], "%Y%m%d") + timedelta(days=1)
    year, mon = int(ids["month"][1:5]), int(ids["month"][5:7])
    resets = {
        "day": tomorrow.strftime("%Y-%m-%dT00:00:00Z"),
        "month": f"{year + mon // 12:04d}-{mon % 12 + 1:02d}-01T00:00:00Z",
        "lifetime": None,
    }
    user_part = hashlib.sha256(b"u-report").hexdigest()[:24]
    redis_key = {
        "project": lambda row: f"{tag(prefix)}p:{row['window_id']}",
        "key": lambda row: f"{tag(prefix)}k:{row['id']}:{row['window_id']}",
        "user": lambda row: f"{tag(prefix)}u:{user_part}:{row['window_id']}",
        "org": lambda row: f"{tag(prefix, 'acme', 'org')}o:{row['window_id']}",
    }
    dims = ("input_tokens", "output_tokens", "total_tokens", "cost_nano_usd")

    async def check(rep: dict[str, Any], expected_rows: set[tuple[str, str]]) -> None:
        assert (rep["project"], rep["project_id"], rep["org"]) == ("alpha", "prj_alpha", "acme")
        rows = rep["counters"]
        assert {(r["scope"], r["window"]) for r in rows} == expected_rows
        assert len(rows) == len(expected_rows)
        for row in rows:
            assert row["window_id"] == ids[row["window"]]
            assert row["resets_at"] == resets[row["window"]]
            state = await counter(redis, redis_key[row["scope"]](row))
            for d, dim in enumerate(dims):
                got = row["dimensions"][dim]
                assert got == {
                    "used": state[f"u{d}"],
                    "reserved": state[f"r{d}"],
                    "cap": caps.get((row["scope"], row["window"]), {}).get(dim),
                }, (row["scope"], row["window"], dim)

    project_rows = {("project", w) for w in ("day", "month", "lifetime")}
    await check(by_read_key, {*project_rows, ("key", "month"), ("org", "month")})
    await check(by_key, {*project_rows, ("key", "month"), ("org", "month")})
    await check(cli_user, {*project_rows, ("user", "day"), ("org", "month")})
    assert {r["id"] for r in by_read_key["counters"] if r["scope"] == "key"} == {"key_read"}
    assert {r["id"] for r in by_key["counters"] if r["scope"] == "key"} == {"key_main"}
    assert [r["user"] for r in cli_user["counters"] if r["scope"] == "user"] == ["u-report"]

    # The figures are the ones expected, not only consistent: two settled requests plus
    # one worst case in flight.
    month = next(r for r in by_key["counters"] if (r["scope"], r["window"]) == ("project", "month"))
    assert month["dimensions"]["total_tokens"] == {
        "used": 30 + 57 + 21 + 8,
        "reserved": WORST,
        "cap": 1_000_000,
    }
    key_month = next(r for r in by_key["counters"] if r["scope"] == "key")
    assert key_month["dimensions"]["total_tokens"]["used"] == 30 + 57
    assert key_month["dimensions"]["total_tokens"]["reserved"] == WORST
    user_day = next(r for r in cli_user["counters"] if r["scope"] == "user")
    assert user_day["dimensions"]["output_tokens"] == {"used": 8, "reserved": 0, "cap": 20_000}
    org_month = next(r for r in by_key["counters"] if r["scope"] == "org")
    assert org_month["dimensions"]["cost_nano_usd"]["used"] == cost(30, 57, 16) + cost(21, 8)
    assert org_month["dimensions"]["total_tokens"]["reserved"] == WORST

    # The stream is dropped: its worst case is billed, nothing stays reserved.
    held.close()

    async def released() -> bool:
        return (await counter(redis, f"{tag(prefix)}p:{ids['month']}"))["r2"] == 0

    await wait_for(released, what="the dropped stream's settlement")
    after = await report(key_auth)
    month = next(r for r in after["counters"] if (r["scope"], r["window"]) == ("project", "month"))
    assert month["dimensions"]["total_tokens"] == {
        "used": 30 + 57 + 21 + 8 + WORST,
        "reserved": 0,
        "cap": 1_000_000,
    }
