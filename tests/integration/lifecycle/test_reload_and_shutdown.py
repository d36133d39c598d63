"""Reloads that reach every worker and apply what they change (or refuse what needs a
restart), readiness that means writable, budget gauges that follow the config, and
unary calls cut at the end of the shutdown grace period with their usage settled."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.context import STATE
from gateway.serve.lifecycle import reload_config
from tests.support.harness import (
    OPERATOR_TOKEN,
    GatewayFactory,
    MakeCreds,
    bearer,
    chat_body,
    edit_gateway_yaml,
)
from tests.support.metrics import scrape
from tests.support.process import Spawn
from tests.support.redis import RedisServer, month_counter, open_reservations, scored
from tests.support.upstream import FakeUpstream, Reply, openai_completion

CHAT = "/v1/projects/{}/chat/completions"
CEILING = 100  # harness: every project has max_output_tokens 100


async def test_admin_reload_reaches_every_worker(
    make_creds: MakeCreds,
    spawn: Spawn,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """With --workers 2 the reload answered by one worker reached only that worker: a
    revoked key went on working on the other. Now every worker reloads."""
    creds = make_creds(limits={})
    gw = await spawn(creds, workers=2)
    url = gw.url(CHAT.format("alpha"))

    def revoke(data: dict[str, Any]) -> None:
        for entry in data["orgs"]["acme"]["api_keys"]:
            if entry["id"] == creds.key_id:
                entry["revoked"] = True

    edit_gateway_yaml(creds, revoke)
    async with http.post(gw.url("/admin/reload"), headers=bearer(OPERATOR_TOKEN)) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["workers"] == "all"
    statuses: list[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses = []
        for _ in range(20):  # new connections: both workers answer some of them
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.post(url, json=chat_body(), headers=bearer(creds.key)) as resp,
            ):
                statuses.append(resp.status)
        if set(statuses) == {401}:
            break
        await asyncio.sleep(0.2)
    assert set(statuses) == {401}, statuses


async def test_a_reload_applies_the_reservation_ttl(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """Longer provider timeouts come with a longer reservation ttl (the config checks
    them together): the running store must take the new ttl, or holds would expire
    while requests allowed by the new timeouts still run."""
    client, config, creds = await make_gateway()
    path = creds.config_dir / "gateway.yaml"
    gw = yaml.safe_load(path.read_text())
    gw["limits"]["reservation_ttl_seconds"] = 200
    gw["providers"]["upstream"]["timeouts"]["total"] = 150
    path.write_text(yaml.safe_dump(gw, sort_keys=False))
    assert reload_config(client.app) is True
    upstream.script(Reply(json=openai_completion(), delay_before_headers=0.5))
    answer = asyncio.create_task(
        client.post(CHAT.format("alpha"), json=chat_body(), headers=bearer(creds.key))
    )
    await upstream.wait_requests(1)
    tag = f"{config.gateway.redis.key_prefix}:{{prj:prj_alpha}}:"
    [(_, expiry)] = await scored(redis, tag + "rsvexp")
    seconds, micros = await redis.time()
    assert 195_000 <= expiry - (seconds * 1000 + micros // 1000) <= 200_000
    assert (await answer).status == 200


@pytest.mark.parametrize(
    ("section", "change", "path"),
    [
        ("redis", {"key_prefix": "elsewhere"}, "redis.key_prefix"),
        ("limits", {"max_body_bytes": 4096}, "limits.max_body_bytes"),
    ],
)
async def test_a_reload_refuses_what_only_a_restart_applies(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    section: str,
    change: dict[str, Any],
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A new key prefix would move every budget to an empty namespace under running
    requests; the body limit is fixed when the server is built. Refused, named."""
    client, config, creds = await make_gateway()
    file = creds.config_dir / "gateway.yaml"
    gw = yaml.safe_load(file.read_text())
    gw[section].update(change)
    file.write_text(yaml.safe_dump(gw, sort_keys=False))
    assert reload_config(client.app) is False
    assert client.app[STATE].config is config
    [rejected] = [r for r in caplog.records if r.getMessage().startswith("config reload rejected")]
    # The record's extra field (logging sets extras as attributes).
    assert f"{path}: changes only on a restart" in rejected.__dict__["problems"]


async def test_readyz_needs_a_store_that_accepts_writes(make_gateway: GatewayFactory) -> None:
    """A read-only replica (after a failover) answers PING yet refuses every reserve:
    not ready."""
    server = RedisServer()
    server.start()
    try:
        client, _, _ = await make_gateway(redis_url=server.url)
        assert (await client.get("/readyz")).status == 200
        admin = Redis.from_url(server.url)
        try:
            await admin.config_set("min-replicas-to-write", 1)  # refuses writes: no replica
            resp = await client.get("/readyz")
            assert resp.status == 503
            assert (await resp.json())["checks"]["budget_store"] == "unreachable"
            await admin.config_set("min-replicas-to-write", 0)
            assert (await client.get("/readyz")).status == 200
        finally:
            await admin.aclose()
    finally:
        server.stop()


def _series(text: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    return {
        tuple(sorted(s.labels.items()))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_budget_gauges_follow_a_reload(make_gateway: GatewayFactory) -> None:
    """A cap a reload removed was still exported as a limit (alerts on used / limit
    went on firing)."""
    client, _, creds = await make_gateway(
        projects={"alpha": {"budgets": {"project": {"day": {"total_tokens": 5000}}}}}
    )
    before = _series(await scrape(client), "gateway_budget_limit_tokens")
    assert any(dict(s).get("project") == "alpha" for s in before), before
    path = creds.config_dir / "projects" / "alpha.yaml"
    project = yaml.safe_load(path.read_text())
    project["budgets"] = {}
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    assert reload_config(client.app) is True
    after = _series(await scrape(client), "gateway_budget_limit_tokens")
    assert not any(dict(s).get("project") == "alpha" for s in after), after


async def test_a_unary_call_past_the_grace_period_gets_a_503_and_is_settled(
    make_creds: MakeCreds,
    spawn: Spawn,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    """Only streams were cut at the end of the grace period: a long unary call kept the
    process alive until a SIGKILL, and its usage was never settled."""
    creds = make_creds(limits={"drain_seconds": 0, "shutdown_grace_seconds": 1})
    gw = await spawn(creds)
    upstream.script(Reply(json=openai_completion(), delay_before_headers=8.0))
    answer = asyncio.create_task(
        http.post(gw.url(CHAT.format("alpha")), json=chat_body(), headers=bearer(creds.key))
    )
    await upstream.wait_requests(1)
    sent = time.monotonic()
    gw.send(signal.SIGTERM)
    resp = await answer
    waited = time.monotonic() - sent
    body = await resp.json()
    assert resp.status == 503, body
    assert "shutting down" in body["detail"]
    assert 0.9 <= waited < 4.0, waited
    assert await gw.wait_exit(10) == 0
    counter = await month_counter(redis, creds)
    assert [counter[f"r{d}"] for d in range(4)] == [0, 0, 0, 0], counter
    assert counter["u1"] == CEILING, counter  # the provider may have done it all
    assert await open_reservations(redis, creds) == 0


async def test_workers_serve_on_while_one_cannot_restart(
    make_creds: MakeCreds, spawn: Spawn, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A worker dies, and the config on disk was broken since the last reload: its
    replacement cannot start. The other worker serves on (restarts are paced); the
    supervisor stops only when no worker serves."""
    creds = make_creds(limits={})
    gw = await spawn(creds, workers=2)
    workers = await gw.wait_workers_listening(2)
    edit_gateway_yaml(creds, lambda data: data.update(bogus_setting=True))
    os.kill(workers[0], signal.SIGKILL)
    await gw.wait_log(lambda r: r.get("msg") == "worker exited; restarting", count=4, timeout=15)
    assert gw.proc is not None
    assert gw.proc.poll() is None, "the supervisor stopped though a worker still served"
    for _ in range(10):
        async with http.post(
            gw.url(CHAT.format("alpha")), json=chat_body(), headers=bearer(creds.key)
        ) as resp:
            assert resp.status == 200
    paused = [
        float(r["in_seconds"]) for r in gw.records() if r.get("msg") == "worker exited; restarting"
    ]
    assert paused[-1] > paused[1] > 0, paused  # a growing pause between attempts
