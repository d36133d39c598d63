"""Retries, fallbacks and circuit breakers through the gateway: real fake upstreams
over TCP, real Redis.

Numbers: ``chat_body("Hello")`` has an input bound of 33 tokens and the harness
projects cap output at 100, so the worst case is 33 + 100 tokens. The fake's default
replies report 11 prompt + 3 completion tokens. Prices in nano-USD per token:
gpt-4o-mini 150 in / 600 out, gpt-4o 2_500 in / 10_000 out.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from gateway.context import STATE
from gateway.serve.lifecycle import reload_config
from tests.support.billing import FOUR_O, NOTHING, Price, cost, used
from tests.support.harness import Client, GatewayFactory, bearer, chat_body, provider_entry
from tests.support.metrics import metric
from tests.support.ports import free_port
from tests.support.redis import counter, month_counter, scored
from tests.support.sse import content_of, data_frames
from tests.support.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    openai_completion,
    openai_error,
    openai_stream,
)

URL = "/v1/projects/alpha/chat/completions"
INPUT_BOUND, CEILING = 33, 100
DEFAULT_USED = used(11, 3, cost(11, 3))  # the fake's default reply, at gpt-4o-mini prices
WORST_MINI = cost(INPUT_BOUND, CEILING)  # 64_950
WORST_4O = cost(INPUT_BOUND, CEILING, price=FOUR_O)  # 1_082_500


# ----------------------------------------------------------------------------- helpers


def resilience(
    attempts: int = 1,
    *,
    base_ms: int = 10,
    max_ms: int = 40,
    retry_after_max: float = 10.0,
    threshold: int = 100,
    cooldown: float = 30.0,
    probes: int = 1,
) -> dict[str, Any]:
    """A complete ``resilience`` section (write_config merges one level deep only)."""
    return {
        "retries": {
            "attempts_per_target": attempts,
            "backoff_base_ms": base_ms,
            "backoff_max_ms": max_ms,
            "retry_after_max_seconds": retry_after_max,
        },
        "breaker": {
            "failure_threshold": threshold,
            "cooldown_seconds": cooldown,
            "half_open_probes": probes,
        },
    }


def routes(*targets: tuple[str, str] | tuple[str, str, int]) -> dict[str, Any]:
    """``projects=`` override: alpha's default alias routed to ``targets`` in order."""
    out = []
    for target in targets:
        route: dict[str, Any] = {"provider": target[0], "model": target[1]}
        if len(target) == 3:
            route["weight"] = target[2]
        out.append(route)
    return {"models": {"default": {"routes": out}}}


def timed(reply: Reply, arrivals: list[float]) -> Any:
    """A responder that records when its request arrived (monotonic clock)."""

    def respond(_: Recorded) -> Reply:
        arrivals.append(time.monotonic())
        return reply

    return respond


def server_error(status: int = 500) -> Reply:
    return Reply(status=status, json=openai_error(status))


async def post(client: Client, key: str, stream: bool = False, **extra: Any) -> Any:
    return await client.post(URL, json=chat_body(stream=stream, **extra), headers=bearer(key))


# ----------------------------------------------------------------------------- retry


@pytest.mark.parametrize("stream", [False, True])
async def test_retry_then_success_bills_only_the_successful_attempt(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, stream: bool
) -> None:
    client, config, creds = await make_gateway(gateway={"resilience": resilience(attempts=2)})
    upstream.script(server_error(500))
    resp = await post(client, creds.key, stream)
    assert resp.status == 200, await resp.text()
    if stream:
        frames = data_frames(await resp.text())
        assert frames[-1] == "[DONE]"
        assert content_of(frames) == "Hello there"
        assert not any("error" in f for f in frames if isinstance(f, dict))
    else:
        body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "Hello there"
        assert body["usage"]["prompt_tokens"] == 11
    assert len(upstream.requests) == 2
    assert upstream.requests[0].json() == upstream.requests[1].json()
    assert await month_counter(redis, config.gateway.redis.key_prefix) == DEFAULT_USED
    assert await metric(client, "gateway_upstream_retries_total", provider="upstream") == 1
    assert await metric(client, "gateway_upstream_fallbacks_total") == 0
    assert await metric(client, "gateway_estimated_usage_total") == 0


async def test_retries_stop_after_attempts_per_target(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(gateway={"resilience": resilience(attempts=3)})
    upstream.script(server_error(500), server_error(502), server_error(503))
    resp = await post(client, creds.key)
    assert resp.status == 502
    assert len(upstream.requests) == 3
    assert await month_counter(redis, config.gateway.redis.key_prefix) == NOTHING
    assert await metric(client, "gateway_upstream_retries_total", provider="upstream") == 2


async def test_a_stream_error_frame_before_the_first_chunk_is_retried_and_not_billed(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """The provider answered 200 and then declared an error as its very first frame:
    nothing reached the client, so the attempt is retried, and the provider's refusal
    costs nothing."""
    client, config, creds = await make_gateway(gateway={"resilience": resilience(attempts=2)})
    error_frame = (
        b'event: error\ndata: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    )
    upstream.script(Reply(sse=error_frame))
    resp = await post(client, creds.key, stream=True)
    assert resp.status == 200
    frames = data_frames(await resp.text())
    assert content_of(frames) == "Hello there"
    assert not any("error" in f for f in frames if isinstance(f, dict))
    assert len(upstream.requests) == 2
    assert await month_counter(redis, config.gateway.redis.key_prefix) == DEFAULT_USED
    assert await metric(client, "gateway_upstream_retries_total", provider="upstream") == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_connect_errors_are_retried_then_fall_back(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, stream: bool
) -> None:
    dead = provider_entry(f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    client, config, creds = await make_gateway(
        gateway={"providers": {"dead": dead}, "resilience": resilience(attempts=2)},
        projects={"alpha": routes(("dead", "gpt-4o-mini"), ("upstream", "gpt-4o-mini"))},
    )
    resp = await post(client, creds.key, stream)
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    if stream:
        assert content_of(data_frames(text)) == "Hello there"
    assert len(upstream.requests) == 1
    assert await month_counter(redis, config.gateway.redis.key_prefix) == DEFAULT_USED
    assert await metric(client, "gateway_upstream_retries_total", provider="dead") == 1
    assert await metric(client, "gateway_upstream_retries_total", provider="upstream") == 0
    assert await metric(client, "gateway_upstream_fallbacks_total", provider="dead") == 1
    assert await metric(client, "gateway_upstream_fallbacks_total", provider="upstream") == 0


# ----------------------------------------------------------------------------- fallback


@pytest.mark.parametrize("stream", [False, True])
async def test_fallback_to_the_next_target(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    second: FakeUpstream,
    redis: Redis,
    stream: bool,
) -> None:
    client, config, creds = await make_gateway(
        gateway={"providers": {"second": provider_entry(second.base_url)}},
        projects={"alpha": routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o-mini"))},
    )
    upstream.script(server_error(503))
    second.script(
        Reply(
            sse=openai_stream(["Fall", "back"], prompt_tokens=20, completion_tokens=7)
            if stream
            else None,
            json=None
            if stream
            else openai_completion("Fallback", prompt_tokens=20, completion_tokens=7),
        )
    )
    resp = await post(client, creds.key, stream)
    assert resp.status == 200, await resp.text()
    if stream:
        assert content_of(data_frames(await resp.text())) == "Fallback"
    else:
        body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "Fallback"
        assert body["model"] == "default"
    assert len(upstream.requests) == 1
    assert len(second.requests) == 1
    assert second.last.json()["model"] == "gpt-4o-mini"
    assert second.last.header("Authorization") == f"Bearer {creds.env['TEST_PROVIDER_KEY']}"
    # The failed first attempt bills nothing: only the second one's usage is settled.
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(20, 7, cost(20, 7))
    assert await metric(client, "gateway_upstream_fallbacks_total", provider="upstream") == 1
    assert await metric(client, "gateway_upstream_fallbacks_total", provider="second") == 0
    assert await metric(client, "gateway_upstream_retries_total") == 0


async def test_every_target_failing_returns_the_last_error(
    make_gateway: GatewayFactory, upstream: FakeUpstream, second: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        gateway={"providers": {"second": provider_entry(second.base_url)}},
        projects={"alpha": routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o-mini"))},
    )
    upstream.script(server_error(500))
    second.script(Reply(status=429, json=openai_error(429), headers={"Retry-After": "30"}))
    resp = await post(client, creds.key)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "30"
    assert (len(upstream.requests), len(second.requests)) == (1, 1)
    assert await month_counter(redis, config.gateway.redis.key_prefix) == NOTHING


# ----------------------------------------------------------------------------- pricier fallback


def pricier_fallback(second: FakeUpstream, cap_usd: str, **caps: Any) -> dict[str, Any]:
    return {
        "gateway": {"providers": {"second": provider_entry(second.base_url)}},
        "projects": {
            "alpha": {
                **routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o")),
                "budgets": {"project": {"month": {"cost_usd": cap_usd, **caps}}},
            }
        },
    }


async def test_fallback_to_a_pricier_model_without_room_is_402(
    make_gateway: GatewayFactory, upstream: FakeUpstream, second: FakeUpstream, redis: Redis
) -> None:
    # 0.001 USD = 1_000_000 nano: the gpt-4o-mini worst case (64_950) fits, the gpt-4o
    # one (1_082_500) does not.
    client, config, creds = await make_gateway(**pricier_fallback(second, "0.001"))
    upstream.script(server_error(500))
    resp = await post(client, creds.key)
    assert resp.status == 402, await resp.text()
    body = await resp.json()
    assert body["error"] == "budget_exhausted"
    assert body["dimension"] == "cost_usd"
    assert body["limit"] == 1_000_000
    assert body["requested"] == WORST_4O
    assert len(upstream.requests) == 1
    assert second.requests == []  # refused before anything was sent to the pricier target
    assert await month_counter(redis, config.gateway.redis.key_prefix) == NOTHING
    assert (
        await metric(
            client, "gateway_budget_rejections_total", project="alpha", dimension="cost_usd"
        )
        == 1
    )


@pytest.mark.parametrize(
    ("cap_usd", "caps"),
    [
        pytest.param("1", {}, id="ample"),
        # Room for the gpt-4o worst case (1_082_500) but not for it plus the gpt-4o-mini
        # hold it replaces (1_147_450): the replaced hold must not count against the cap.
        pytest.param("0.0011", {}, id="tight-cost"),
        # Token amounts do not change with the model: a token cap that has room for the
        # request (133 tokens worst case) must not refuse the move to a pricier model.
        pytest.param("1", {"total_tokens": 200}, id="tight-tokens"),
    ],
)
async def test_fallback_to_a_pricier_model_with_room_bills_its_prices(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    second: FakeUpstream,
    redis: Redis,
    cap_usd: str,
    caps: dict[str, Any],
) -> None:
    client, config, creds = await make_gateway(**pricier_fallback(second, cap_usd, **caps))
    upstream.script(server_error(500))
    second.script(Reply(json=openai_completion(prompt_tokens=20, completion_tokens=30)))
    resp = await post(client, creds.key)
    assert resp.status == 200, await resp.text()
    assert len(second.requests) == 1
    assert second.last.json()["model"] == "gpt-4o"
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(
        20, 30, cost(20, 30, price=FOUR_O)
    )
    assert cost(20, 30, price=FOUR_O) == 350_000
    assert await metric(client, "gateway_cost_usd_total", project="alpha") == pytest.approx(
        350_000 / 1e9
    )


async def test_fallback_to_a_pricier_model_rechecks_the_org_cost_cap(
    make_gateway: GatewayFactory, upstream: FakeUpstream, second: FakeUpstream, redis: Redis
) -> None:
    """An org cost cap bounds its projects like a project cap: the org's hold must move
    to the pricier model's worst case too, or be refused."""
    client, config, creds = await make_gateway(
        gateway={
            "providers": {"second": provider_entry(second.base_url)},
            # Replaces org acme (and its API keys): session tokens authenticate here.
            "orgs": {"acme": {"budgets": {"month": {"cost_usd": "0.001"}}}},
        },
        projects={"alpha": routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o"))},
    )
    upstream.script(server_error(500))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.session("alpha")))
    assert resp.status == 402, await resp.text()
    assert (await resp.json())["error"] == "budget_exhausted"
    assert second.requests == []
    assert await month_counter(redis, config.gateway.redis.key_prefix) == NOTHING


async def test_a_second_fallback_holds_its_whole_worst_case_with_org_caps(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """Each fallback holds the difference on the project and on the org: the next
    fallback must count what one scope holds, not both (it under-reserved by one
    difference per scope, so a concurrent request could take room it did not have)."""
    mid = Price(1_000, 4_000)
    client, config, creds = await make_gateway(
        gateway={
            "orgs": {"acme": {"budgets": {"month": {"cost_usd": "1000"}}}},
            "prices": {"mid-model": {"input": "1.00", "output": "4.00"}},
        },
        projects={
            "alpha": routes(
                ("upstream", "gpt-4o-mini"), ("upstream", "mid-model"), ("upstream", "gpt-4o")
            )
        },
    )
    upstream.script(
        server_error(503),
        server_error(503),
        Reply(
            json=openai_completion(prompt_tokens=20, completion_tokens=30), delay_before_headers=0.5
        ),
    )
    answer = asyncio.create_task(
        client.post(URL, json=chat_body(), headers=bearer(creds.session("alpha")))
    )
    await upstream.wait_requests(3)
    prefix = config.gateway.redis.key_prefix
    seconds, _ = await redis.time()
    month = time.strftime("m%Y%m", time.gmtime(seconds))
    project_hold = await counter(redis, f"{prefix}:{{prj:prj_alpha}}:p:{month}")
    org_hold = await counter(redis, f"{prefix}:{{org:acme}}:o:{month}")
    assert cost(INPUT_BOUND, CEILING, price=mid) > WORST_MINI
    assert project_hold["r3"] == WORST_4O  # was WORST_4O - (mid - mini difference)
    assert org_hold["r3"] == WORST_4O
    resp = await answer
    assert resp.status == 200, await resp.text()
    assert await month_counter(redis, prefix) == used(20, 30, cost(20, 30, price=FOUR_O))


async def test_a_reload_during_a_retry_keeps_the_requests_routes(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """An operator renames the provider while a request waits to retry: the request
    finishes on the config it began with (it was a 500, a KeyError, before); the next
    request uses the new one."""
    client, _, creds = await make_gateway(
        gateway={"resilience": resilience(attempts=2, retry_after_max=5)}
    )
    upstream.script(Reply(status=429, json=openai_error(429), headers={"Retry-After": "1"}))
    answer = asyncio.create_task(post(client, creds.key))
    await upstream.wait_requests(1)
    path = creds.config_dir / "gateway.yaml"
    gw = yaml.safe_load(path.read_text())
    gw["providers"]["primary"] = gw["providers"].pop("upstream")
    path.write_text(yaml.safe_dump(gw, sort_keys=False))
    for project in (creds.config_dir / "projects").glob("*.yaml"):
        project.write_text(project.read_text().replace("provider: upstream", "provider: primary"))
    assert reload_config(client.app) is True
    resp = await answer
    assert resp.status == 200, await resp.text()
    assert len(upstream.requests) == 2  # the retry went to the provider it started with
    again = await post(client, creds.key)
    assert again.status == 200, await again.text()
    assert len(upstream.requests) == 3


def short_holds(upstream: FakeUpstream) -> dict[str, Any]:
    """A 10 s hold: the shortest a provider with total 3 s + idle 2 s allows (+ 5 s)."""
    timeouts = {"connect": 2, "first_byte": 3, "idle": 2, "total": 3}
    return {
        "limits": {"reservation_ttl_seconds": 10},
        "providers": {"upstream": provider_entry(upstream.base_url, **timeouts)},
        "resilience": resilience(attempts=2),
    }


async def test_the_hold_is_renewed_before_a_retry(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """Each attempt is shorter than the hold, and the hold is renewed before the next
    one: a request retried past its first ttl never runs without its reservation."""
    client, config, creds = await make_gateway(gateway=short_holds(upstream))
    slow_failure = server_error(503)
    slow_failure.delay_before_headers = 1.5
    slow_answer = Reply(json=openai_completion(), delay_before_headers=1.0)
    upstream.script(slow_failure, slow_answer)
    tag = f"{config.gateway.redis.key_prefix}:{{prj:prj_alpha}}:"
    answer = asyncio.create_task(post(client, creds.key))
    await upstream.wait_requests(1)
    [(rid, first_expiry)] = await scored(redis, tag + "rsvexp")
    await upstream.wait_requests(2)  # the retry is in flight
    [(same, renewed_expiry)] = await scored(redis, tag + "rsvexp")
    assert same == rid
    assert renewed_expiry - first_expiry >= 1_400  # renewed after the 1.5 s first attempt
    resp = await answer
    assert resp.status == 200, await resp.text()
    assert await redis.zcard(tag + "rsvexp") == 0


async def test_no_retry_runs_once_the_hold_is_gone(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """If the hold expired and was released anyway (here: removed), the request stops
    with the upstream's error instead of retrying without a reservation."""
    client, config, creds = await make_gateway(gateway=short_holds(upstream))
    slow_failure = server_error(503)
    slow_failure.delay_before_headers = 0.5
    upstream.script(slow_failure, Reply(json=openai_completion()))
    tag = f"{config.gateway.redis.key_prefix}:{{prj:prj_alpha}}:"
    answer = asyncio.create_task(post(client, creds.key))
    await upstream.wait_requests(1)
    [rid] = await redis.hkeys(tag + "rsv")
    await redis.hdel(tag + "rsv", rid)  # what a purge of an expired hold leaves
    await redis.zrem(tag + "rsvexp", rid)
    resp = await answer
    assert resp.status == 502, await resp.text()  # the upstream's 503, not retried
    assert len(upstream.requests) == 1


# ----------------------------------------------------------------------------- Retry-After


async def test_retry_after_is_honoured(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(gateway={"resilience": resilience(attempts=2)})
    arrivals: list[float] = []
    upstream.script(
        timed(Reply(status=429, json=openai_error(429), headers={"Retry-After": "1"}), arrivals),
        timed(Reply(json=openai_completion()), arrivals),
    )
    started = time.monotonic()
    resp = await post(client, creds.key)
    elapsed = time.monotonic() - started
    assert resp.status == 200, await resp.text()
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.99  # the upstream's 1 s, not a 10-40 ms backoff
    assert elapsed < 5
    assert await month_counter(redis, config.gateway.redis.key_prefix) == DEFAULT_USED
    assert await metric(client, "gateway_upstream_retries_total", provider="upstream") == 1


async def test_retry_after_above_the_max_is_relayed_without_retrying(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        gateway={"resilience": resilience(attempts=3, retry_after_max=2)}
    )
    upstream.script(Reply(status=429, json=openai_error(429), headers={"Retry-After": "30"}))
    started = time.monotonic()
    resp = await post(client, creds.key)
    assert time.monotonic() - started < 2  # did not wait for it either
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "30"
    assert len(upstream.requests) == 1
    assert await month_counter(redis, config.gateway.redis.key_prefix) == NOTHING
    assert await metric(client, "gateway_upstream_retries_total") == 0


async def test_retry_after_above_the_max_falls_back(
    make_gateway: GatewayFactory, upstream: FakeUpstream, second: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        gateway={
            "providers": {"second": provider_entry(second.base_url)},
            "resilience": resilience(attempts=3, retry_after_max=2),
        },
        projects={"alpha": routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o-mini"))},
    )
    upstream.script(Reply(status=429, json=openai_error(429), headers={"Retry-After": "30"}))
    started = time.monotonic()
    resp = await post(client, creds.key)
    assert time.monotonic() - started < 2
    assert resp.status == 200, await resp.text()
    assert (len(upstream.requests), len(second.requests)) == (1, 1)
    assert await month_counter(redis, config.gateway.redis.key_prefix) == DEFAULT_USED
    assert await metric(client, "gateway_upstream_retries_total") == 0
    assert await metric(client, "gateway_upstream_fallbacks_total", provider="upstream") == 1


# ----------------------------------------------------------------------------- breaker


@pytest.mark.serial
async def test_breaker_opens_skips_then_probes_and_closes(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        gateway={"resilience": resilience(threshold=2, cooldown=1.0)}
    )
    upstream.script(server_error(500), server_error(500))
    for _ in range(2):
        resp = await post(client, creds.key)
        assert resp.status == 502
    opened_at = time.monotonic()
    assert len(upstream.requests) == 2

    # Open: skipped without a request, 503 at once, told when to come back.
    for _ in range(3):
        started = time.monotonic()
        resp = await post(client, creds.key)
        assert time.monotonic() - started < 0.5
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert "circuit open" in (await resp.json())["detail"]
    assert len(upstream.requests) == 2
    assert await month_counter(redis, config.gateway.redis.key_prefix) == NOTHING

    # After the cooldown a probe goes through; its success closes the breaker.
    await asyncio.sleep(max(0.0, opened_at + 1.05 - time.monotonic()))
    resp = await post(client, creds.key)
    assert resp.status == 200, await resp.text()
    assert len(upstream.requests) == 3
    for _ in range(3):  # closed: more than the one half-open probe gets through
        resp = await post(client, creds.key)
        assert resp.status == 200
    assert len(upstream.requests) == 6
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(
        44, 12, 4 * cost(11, 3)
    )


async def test_streams_failing_midway_open_the_breaker(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """A provider that cuts every stream after its first bytes failed as surely as one
    answering 500, but each stream counted as a success: the breaker never opened."""
    client, _, creds = await make_gateway(
        gateway={"resilience": resilience(threshold=2, cooldown=30.0)}
    )
    cut = Reply(
        sse=openai_stream(["Hello", " there"] * 20),
        slice_size=200,
        delay_between_slices=0.01,
        cut_after_bytes=1200,
    )
    upstream.script(cut, cut)
    for _ in range(2):
        resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
        assert resp.status == 200
        assert "upstream_error" in await resp.text()  # the mid-stream error event
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 503
    assert "circuit open" in (await resp.json())["detail"]
    assert len(upstream.requests) == 2


@pytest.mark.serial
async def test_breaker_retry_after_is_the_remaining_cooldown(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"resilience": resilience(threshold=1, cooldown=30.0)}
    )
    upstream.script(server_error(500))
    assert (await post(client, creds.key)).status == 502
    resp = await post(client, creds.key)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "30"
    assert len(upstream.requests) == 1


@pytest.mark.serial
async def test_a_failed_probe_reopens_the_breaker(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"resilience": resilience(threshold=2, cooldown=1.0)}
    )
    upstream.script(server_error(500), server_error(500), server_error(500))
    for _ in range(2):
        assert (await post(client, creds.key)).status == 502
    await asyncio.sleep(1.05)
    assert (await post(client, creds.key)).status == 502  # the probe fails
    assert len(upstream.requests) == 3
    resp = await post(client, creds.key)  # open again, for a whole new cooldown
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert len(upstream.requests) == 3
    await asyncio.sleep(1.05)
    assert (await post(client, creds.key)).status == 200
    assert len(upstream.requests) == 4


async def test_an_open_target_is_skipped_for_the_fallback(
    make_gateway: GatewayFactory, upstream: FakeUpstream, second: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={
            "providers": {"second": provider_entry(second.base_url)},
            "resilience": resilience(threshold=2, cooldown=30.0),
        },
        projects={"alpha": routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o-mini"))},
    )
    upstream.script(server_error(500), server_error(500))
    for _ in range(2):
        assert (await post(client, creds.key)).status == 200  # served by the fallback
    assert (len(upstream.requests), len(second.requests)) == (2, 2)
    for _ in range(3):  # the first target is open: straight to the second one
        assert (await post(client, creds.key)).status == 200
    assert (len(upstream.requests), len(second.requests)) == (2, 5)


async def test_a_probe_answered_with_a_client_error_does_not_wedge_the_breaker(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """A half-open probe that ends in a non-retryable answer (the upstream is up; it
    refused this request) must resolve the probe: later requests reach the upstream
    again instead of being refused with 503 forever."""
    client, _, creds = await make_gateway(
        gateway={"resilience": resilience(threshold=2, cooldown=1.0)}
    )
    upstream.script(
        server_error(500),
        server_error(500),
        Reply(status=400, json=openai_error(400, "bad 'temperature'")),
    )
    for _ in range(2):
        assert (await post(client, creds.key)).status == 502
    await asyncio.sleep(1.05)
    resp = await post(client, creds.key)  # the probe: the upstream answers 400
    assert resp.status == 422
    assert len(upstream.requests) == 3
    resp = await post(client, creds.key)
    assert resp.status == 200, await resp.text()
    assert len(upstream.requests) == 4


# ----------------------------------------------------------------------------- after the first byte


async def test_a_failure_after_the_first_byte_is_not_retried(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(gateway={"resilience": resilience(attempts=3)})
    raw = openai_stream([f"p{i:02d} " for i in range(20)], prompt_tokens=20, completion_tokens=40)
    events = raw.split(b"\n\n")
    cut = sum(len(e) + 2 for e in events[:4]) + 50  # role chunk + 3 pieces, then 50 bytes
    upstream.script(Reply(sse=raw, cut_after_bytes=cut))
    resp = await post(client, creds.key, stream=True)
    assert resp.status == 200
    text = await resp.text()
    frames = data_frames(text)
    assert content_of(frames) == "p00 p01 p02 "
    assert "event: error" in text
    assert frames[-1] != "[DONE]"
    assert frames[-1]["error"]["code"] == "upstream_error"
    assert len(upstream.requests) == 1
    assert upstream.last.cut
    # Cut: the tokens generated unseen are unknown, so the whole ceiling is billed.
    counter = await month_counter(redis, config.gateway.redis.key_prefix)
    assert counter == used(INPUT_BOUND, CEILING, WORST_MINI)
    assert counter["u1"] >= len("p00 p01 p02 ")
    assert await metric(client, "gateway_upstream_retries_total") == 0
    assert await metric(client, "gateway_upstream_fallbacks_total") == 0


@pytest.mark.parametrize("slice_size", [97, 65_536])  # 65_536: chunks and error in one read
async def test_a_failure_after_the_first_byte_does_not_fall_back(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    second: FakeUpstream,
    redis: Redis,
    slice_size: int,
) -> None:
    client, config, creds = await make_gateway(
        gateway={
            "providers": {"second": provider_entry(second.base_url)},
            "resilience": resilience(attempts=2),
        },
        projects={"alpha": routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o-mini"))},
    )
    raw = openai_stream(["a ", "b ", "c ", "d "], prompt_tokens=20, completion_tokens=40)
    declared = b'event: error\ndata: {"error":{"message":"boom","type":"server_error"}}\n\n'
    events = raw.split(b"\n\n")
    body = b"\n\n".join(events[:3]) + b"\n\n" + declared
    upstream.script(Reply(sse=body, slice_size=slice_size))
    resp = await post(client, creds.key, stream=True)
    assert resp.status == 200
    frames = data_frames(await resp.text())
    assert content_of(frames) == "a b "
    assert frames[-1]["error"]["message"] == "the provider reported an error (server_error)"
    assert (len(upstream.requests), len(second.requests)) == (1, 0)
    counter = await month_counter(redis, config.gateway.redis.key_prefix)
    assert counter["u1"] >= len("a b ")
    assert counter["r0"] == counter["r1"] == counter["r3"] == 0


# ----------------------------------------------------------------------------- non-retryable


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error"),
    [(401, "byok_key_rejected"), (403, "byok_key_rejected"), (400, "validation_failed")],
)
async def test_non_retryable_errors_are_not_retried(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    second: FakeUpstream,
    redis: Redis,
    stream: bool,
    status: int,
    error: str,
) -> None:
    client, config, creds = await make_gateway(
        gateway={
            "providers": {"second": provider_entry(second.base_url)},
            "resilience": resilience(attempts=3),
        },
        projects={"alpha": routes(("upstream", "gpt-4o-mini"), ("second", "gpt-4o-mini"))},
    )
    upstream.script(Reply(status=status, json=openai_error(status)))
    resp = await post(client, creds.key, stream)
    assert resp.status == 422
    assert (await resp.json())["error"] == error
    assert len(upstream.requests) == 1
    assert second.requests == []  # not a fallback case either
    assert await month_counter(redis, config.gateway.redis.key_prefix) == NOTHING
    assert await metric(client, "gateway_upstream_retries_total") == 0
    assert await metric(client, "gateway_upstream_fallbacks_total") == 0


# ----------------------------------------------------------------------------- weights


async def test_weighted_routes_share_the_traffic(
    make_gateway: GatewayFactory, upstream: FakeUpstream, second: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway(
        gateway={"providers": {"second": provider_entry(second.base_url)}},
        projects={"alpha": routes(("upstream", "gpt-4o-mini", 1), ("second", "gpt-4o-mini", 3))},
    )
    client.app[STATE].rng = random.Random(1234)
    total = 40
    for _ in range(total):
        assert (await post(client, creds.key)).status == 200
    light, heavy = len(upstream.requests), len(second.requests)
    assert light + heavy == total  # each request went to exactly one target
    assert light >= 1
    assert heavy >= 1
    assert heavy > light
    assert await month_counter(redis, config.gateway.redis.key_prefix) == used(
        11 * total, 3 * total, total * cost(11, 3)
    )
    assert await metric(client, "gateway_upstream_fallbacks_total") == 0
