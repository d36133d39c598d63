"""One tenant cannot hurt another: what one org's caller can see, change or exhaust.

Every test runs ``gateway serve`` as a real subprocess (tests/process.py) against the
test Redis and the fake upstream over TCP, and attacks it the way a hostile tenant
would: with its own valid credentials, over the API port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakeupstream import FakeUpstream
from tests.harness import Credentials, bearer, chat_body, write_config
from tests.process import GatewayProcess

CHAT = "/v1/projects/{}/chat/completions"
METRICS_TOKEN = "metrics-scrape-token-" + "m" * 24

MakeCreds = Callable[..., Credentials]
Spawn = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
def make_creds(tmp_path: Path, upstream: FakeUpstream, redis_url: str) -> MakeCreds:
    counter = 0

    def factory(env: dict[str, str] | None = None, **overrides: Any) -> Credentials:
        nonlocal counter
        counter += 1
        creds = write_config(
            tmp_path / f"config{counter}", upstream.base_url, redis_url, **overrides
        )
        creds.env.update(env or {})
        return creds

    return factory


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    procs: list[GatewayProcess] = []

    async def factory(creds: Credentials, workers: int = 1) -> GatewayProcess:
        gw = GatewayProcess(creds, tmp_path / f"gateway{len(procs)}.log", workers)
        procs.append(gw)
        await gw.start()
        return gw

    try:
        yield factory
    finally:
        for gw in procs:
            gw.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=15)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


def families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


# ------------------------------------------------------------------------------ /metrics


async def test_metrics_are_not_served_on_the_api_port(
    make_creds: MakeCreds, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    """/metrics on the API port listed every org's project slugs, caps and spend to
    anyone; it now answers only on the metrics listener."""
    creds = make_creds(
        projects={"gamma": {"budgets": {"project": {"day": {"total_tokens": 777_000}}}}}
    )
    gw = await spawn(creds)
    resp = await http.post(
        gw.url(CHAT.format("alpha")), json=chat_body(), headers=bearer(creds.key)
    )
    assert resp.status == 200, await resp.text()
    for headers in ({}, bearer(creds.key), bearer(creds.other_org_key)):
        resp = await http.get(gw.url("/metrics"), headers=headers)
        text = await resp.text()
        assert resp.status == 404, text
        assert await resp.json() == {"detail": "Not Found"}
        assert "gamma" not in text
        assert "gateway_" not in text
    async with http.get(gw.metrics_url) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert "gateway_requests" in families(text)
    assert 'project="gamma"' in text
    assert "777000" in text


async def test_metrics_listener_with_a_bearer_token(
    make_creds: MakeCreds, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    creds = make_creds(
        gateway={"metrics": {"listen": "127.0.0.1:0", "bearer_token_env": "METRICS_TOKEN"}},
        env={"METRICS_TOKEN": METRICS_TOKEN},
    )
    gw = await spawn(creds)
    for headers in ({}, bearer("wrong"), bearer(METRICS_TOKEN[:-1]), bearer(creds.key)):
        async with http.get(gw.metrics_url, headers=headers) as resp:
            assert resp.status == 401, await resp.text()
            assert await resp.json() == {"detail": "Unauthorized"}
    async with http.get(gw.metrics_url, headers=bearer(METRICS_TOKEN)) as resp:
        assert resp.status == 200
        assert "gateway_requests" in families(await resp.text())


async def test_with_workers_one_process_binds_the_metrics_listener(
    make_creds: MakeCreds, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    creds = make_creds()
    gw = await spawn(creds, workers=2)
    alpha = gw.url(CHAT.format("alpha"))
    for _ in range(6):  # new connections: both workers get some
        resp = await http.post(alpha, json=chat_body(), headers=bearer(creds.key))
        assert resp.status == 200
    binders = []
    for pid in [gw.pid, *gw.worker_pids()]:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == gw.metrics_port:
                binders.append(pid)
    assert len(binders) == 1, binders
    async with http.get(gw.metrics_url) as resp:
        text = await resp.text()
    total = sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "gateway_requests_total"
    )
    assert total == 6  # every worker's requests, summed by the one that serves metrics
