"""One tenant cannot hurt another: what one org's caller can see, change or exhaust.

Every test runs ``gateway serve`` as a real subprocess (tests/support/process.py) against the
test Redis and the fake upstream over TCP, and attacks it the way a hostile tenant
would: with its own valid credentials, over the API port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml

from gateway.context import STATE
from gateway.credentials import generate_key
from tests.support.harness import (
    BYOK_KEY,
    OPERATOR_TOKEN,
    PROVIDER_KEY,
    Credentials,
    GatewayFactory,
    MakeCreds,
    bearer,
    chat_body,
    edit_gateway_yaml,
    provider_entry,
)
from tests.support.metrics import families, sample_sum
from tests.support.process import Spawn
from tests.support.upstream import FakeUpstream, Recorded, Reply, default_reply, openai_error

CHAT = "/v1/projects/{}/chat/completions"
METRICS_TOKEN = "metrics-scrape-token-" + "m" * 24

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
        assert (await resp.json())["detail"] == "Not Found"
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
            assert (await resp.json())["detail"] == "Unauthorized"
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
    total = sample_sum(text, "gateway_requests_total")
    assert total == 6  # every worker's requests, summed by the one that serves metrics


# ------------------------------------------------------------------------ /admin/reload


def add_org_admin(creds: Credentials, org: str) -> str:
    """An ``admin``-scoped API key of ``org``; returns its secret."""
    key = generate_key()

    def change(data: dict[str, Any]) -> None:
        data["orgs"][org]["api_keys"].append(
            {"id": f"key_{org}_admin", "prefix": key.prefix, "sha256": key.sha256,
             "scopes": ["admin"]}
        )  # fmt: skip

    edit_gateway_yaml(creds, change)
    return key.secret


def write_project(creds: Credentials, slug: str, org: str, **extra: Any) -> Path:
    path = creds.config_dir / "projects" / f"{slug}.yaml"
    body = {
        "id": f"prj_{slug}",
        "org": org,
        "models": {"default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]}},
        **extra,
    }
    path.write_text(yaml.safe_dump(body))
    return path


async def test_an_org_admin_key_cannot_reload_the_gateway_or_read_other_orgs_errors(
    make_creds: MakeCreds, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    """globex's admin key reloaded every org's config and was shown acme's config
    errors. Gateway-wide operations now need the operator token."""
    creds = make_creds()
    globex_admin = add_org_admin(creds, "globex")
    gw = await spawn(creds)
    url = gw.url("/admin/reload")
    write_project(creds, "globex-new", "globex")
    resp = await http.post(url, headers=bearer(globex_admin))
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert set(body) == {"detail", "message"}, body
    assert "operator token" in body["detail"]
    new = gw.url(CHAT.format("globex-new"))
    resp = await http.post(new, json=chat_body(), headers=bearer(creds.other_org_key))
    assert resp.status == 404, "nothing was reloaded"

    # acme's file broken: globex's admin learns nothing of it, the operator everything.
    write_project(creds, "acme-broken", "acme", secret_plan="acme internal")
    resp = await http.post(url, headers=bearer(globex_admin))
    assert resp.status == 403
    text = await resp.text()
    assert "acme" not in text
    assert "secret_plan" not in text
    resp = await http.post(url, headers=bearer(OPERATOR_TOKEN))
    assert resp.status == 422, await resp.text()
    problems = (await resp.json())["problems"]
    assert any("acme-broken" in p["file"] and "secret_plan" in p["path"] for p in problems)
    (creds.config_dir / "projects" / "acme-broken.yaml").unlink()
    resp = await http.post(url, headers=bearer(OPERATOR_TOKEN))
    assert resp.status == 200, await resp.text()
    resp = await http.post(new, json=chat_body(), headers=bearer(creds.other_org_key))
    assert resp.status == 200, await resp.text()
    # A wrong operator token is no credential at all: 401, as anywhere.
    resp = await http.post(url, headers=bearer(OPERATOR_TOKEN[:-1] + "x"))
    assert resp.status == 401


async def test_without_an_operator_token_reload_is_refused_and_sighup_remains(
    make_creds: MakeCreds, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    creds = make_creds()
    del creds.env["KARTA_OPERATOR_TOKEN"]
    admin = add_org_admin(creds, "acme")
    gw = await spawn(creds)
    write_project(creds, "delta", "acme")
    for headers in ({}, bearer(admin), bearer(OPERATOR_TOKEN), bearer("")):
        resp = await http.post(gw.url("/admin/reload"), headers=headers)
        assert resp.status == 403, await resp.text()
        detail = (await resp.json())["detail"]
        assert "KARTA_OPERATOR_TOKEN" in detail
        assert "SIGHUP" in detail
    delta = gw.url(CHAT.format("delta"))
    resp = await http.post(delta, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 404
    gw.send(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while (
        status := (await http.post(delta, json=chat_body(), headers=bearer(creds.key))).status
    ) != 200:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------ circuit breaker

BREAKER = {
    "retries": {"attempts_per_target": 1, "backoff_base_ms": 10},
    "breaker": {"failure_threshold": 3, "cooldown_seconds": 30, "half_open_probes": 1},
}


@pytest.mark.parametrize("failure", ["http_500", "timeout", "byok_500", "byok_timeout"])
async def test_one_orgs_failures_do_not_open_the_breaker_for_another(
    make_gateway: GatewayFactory, upstream: FakeUpstream, failure: str
) -> None:
    """Three failing requests from globex opened the breaker of the (provider, model)
    and acme got 503 for 30 s. Whatever fails globex's requests (what they ask, which
    makes the model answer 5xx or time out, or its own BYOK key), acme is served."""
    byok = failure.startswith("byok")
    projects = {"gamma": {"provider_keys": {"upstream": "TEST_BYOK_KEY"}}} if byok else {}
    client, _, creds = await make_gateway(
        projects=projects,
        gateway={
            "resilience": BREAKER,
            "providers": {"upstream": provider_entry(upstream.base_url, first_byte=0.3)},
        },
    )
    bad = (
        Reply(delay_before_headers=1.0)
        if failure.endswith("timeout")
        else Reply(status=500, json=openai_error(500))
    )
    upstream.script(*[bad] * 3)
    gamma = "/v1/projects/gamma/chat/completions"
    statuses = []
    for _ in range(4):
        resp = await client.post(gamma, json=chat_body(), headers=bearer(creds.other_org_key))
        statuses.append(resp.status)
    # globex's own circuit opened (its fourth request is not sent upstream) ...
    assert set(statuses[:3]) <= {502, 504}, statuses
    assert statuses[3] == 503, statuses
    assert len(upstream.requests) == 3
    sent_with = {r.header("Authorization") for r in upstream.requests}
    assert sent_with == {f"Bearer {BYOK_KEY if byok else PROVIDER_KEY}"}
    # ... acme's did not: same provider, same model, served at once.
    for project in ("alpha", "beta"):
        url = f"/v1/projects/{project}/chat/completions"
        resp = await client.post(url, json=chat_body(), headers=bearer(creds.key))
        assert resp.status == 200, await resp.text()
    assert len(upstream.requests) == 5


# ------------------------------------------------------------------- what one request costs

MiB = 1 << 20


def element_bomb(size: int = MiB - 4096) -> bytes:
    """A valid chat request padded with ~``size`` bytes of tiny JSON elements."""
    head = b'{"messages":[{"role":"user","content":"hi"}],"metadata":{"pad":['
    count = (size - len(head)) // 3
    return head + b",".join([b"{}"] * count) + b"]}}"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.serial
async def test_an_element_bomb_is_refused_before_it_is_decoded(
    make_creds: MakeCreds, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    """30 concurrent 1 MiB bodies of tiny elements grew the process from 65 MB to
    1.27 GB and stalled its loop: another org got 503s. They are now refused from their
    bytes (413 naming the limit); the process's peak memory stays bounded and the other
    org is served meanwhile."""
    creds = make_creds()
    gw = await spawn(creds)
    alpha = gw.url(CHAT.format("alpha"))
    gamma = gw.url(CHAT.format("gamma"))
    for _ in range(3):  # warm: first-request allocations are not the bomb's
        resp = await http.post(gamma, json=chat_body(), headers=bearer(creds.other_org_key))
        assert resp.status == 200
    before = rss_kib(gw.pid)
    bomb = element_bomb()
    headers = {**bearer(creds.key), "Content-Type": "application/json"}

    async def send_bomb() -> tuple[int, Any]:
        async with http.post(alpha, data=bomb, headers=headers) as resp:
            return resp.status, await resp.json()

    async def other_org() -> list[tuple[int, float]]:
        out = []
        for _ in range(10):
            started = time.monotonic()
            async with http.post(
                gamma, json=chat_body(), headers=bearer(creds.other_org_key)
            ) as resp:
                out.append((resp.status, time.monotonic() - started))
        return out

    bombs, served = await asyncio.gather(
        asyncio.gather(*(send_bomb() for _ in range(30))), other_org()
    )
    for status, body in bombs:
        assert status == 413, body
        assert "limits.max_json_elements" in body["detail"], body
    assert [status for status, _ in served] == [200] * 10
    assert max(seconds for _, seconds in served) < 2.0, served
    peak_growth_mib = (rss_kib(gw.pid, "VmHWM") - before) / 1024
    # Generous: the raw bodies being read (30 MiB) and allocator slack; decoding them
    # took over 1,200 MiB.
    assert peak_growth_mib < 200, peak_growth_mib


async def test_json_limits_name_themselves_and_spare_honest_bodies(
    make_gateway: GatewayFactory,
) -> None:
    client, _, creds = await make_gateway(
        gateway={"limits": {"reservation_ttl_seconds": 60, "max_json_elements": 1000,
                            "max_json_depth": 16}}
    )  # fmt: skip
    url = "/v1/projects/alpha/chat/completions"
    headers = {**bearer(creds.key), "Content-Type": "application/json"}
    wide = chat_body(metadata={"pad": [0] * 1000})
    resp = await client.post(url, json=wide, headers=bearer(creds.key))
    assert resp.status == 413, await resp.text()
    assert "1000 JSON elements (limits.max_json_elements)" in (await resp.json())["detail"]
    nested: Any = 0
    for _ in range(20):
        nested = [nested]
    resp = await client.post(url, json=chat_body(metadata={"deep": nested}), headers=headers)
    assert resp.status == 422, await resp.text()
    assert "limits.max_json_depth" in (await resp.json())["message"]
    # Thousands of commas and brackets inside a string are text, not elements.
    csv = ",".join(["[1,{2}]"] * 5000)
    resp = await client.post(url, json=chat_body(csv), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()


async def test_a_compressed_body_is_bounded_by_its_decoded_size(
    make_gateway: GatewayFactory,
) -> None:
    client, _, creds = await make_gateway()
    inflated = b'{"messages":[{"role":"user","content":"' + b"a" * (64 * MiB) + b'"}]}'
    packed = gzip.compress(inflated, compresslevel=9)
    assert len(packed) < MiB // 4
    headers = {
        **bearer(creds.key),
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    resp = await client.post("/v1/projects/alpha/chat/completions", data=packed, headers=headers)
    assert resp.status == 413, await resp.text()


def slow(seconds: float) -> Callable[[Recorded], Reply]:
    return lambda rec: dataclasses.replace(default_reply(rec), delay_before_headers=seconds)


@pytest.mark.serial
async def test_in_flight_caps_per_key_and_per_org(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"limits": {"reservation_ttl_seconds": 60, "max_in_flight_per_key": 2,
                            "max_in_flight_per_org": 3}}
    )  # fmt: skip
    alpha = "/v1/projects/alpha/chat/completions"
    gamma = "/v1/projects/gamma/chat/completions"
    upstream.script(slow(1.0), slow(1.0), slow(1.0))
    held = [
        asyncio.create_task(client.post(alpha, json=chat_body(), headers=bearer(creds.key)))
        for _ in range(2)
    ]
    await upstream.wait_requests(2)
    # The key's third: 429 at once, before its body is read.
    resp = await client.post(alpha, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 429, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    assert "limits.max_in_flight_per_key" in (await resp.json())["detail"]
    # Another credential of the org takes the org's last slot; then the org is full.
    token_call = asyncio.create_task(
        client.post(alpha, json=chat_body(), headers=bearer(creds.session("alpha")))
    )
    await upstream.wait_requests(3)
    resp = await client.post(
        alpha, json=chat_body(), headers=bearer(creds.session("alpha", sub="u2"))
    )
    assert resp.status == 429, await resp.text()
    assert "limits.max_in_flight_per_org" in (await resp.json())["detail"]
    # Another org is served all along.
    started = time.monotonic()
    resp = await client.post(gamma, json=chat_body(), headers=bearer(creds.other_org_key))
    assert resp.status == 200, await resp.text()
    assert time.monotonic() - started < 0.9
    for answer in await asyncio.gather(*held, token_call):
        assert answer.status == 200
    # Slots come back once answered.
    resp = await client.post(alpha, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    assert client.app[STATE].in_flight.by_key == {}


# ------------------------------------------------------------------------------ slowloris

SLOW = {
    "reservation_ttl_seconds": 60,
    "header_timeout_seconds": 1.0,
    "body_timeout_seconds": 1.5,
    "max_connections_per_address": 5,
}


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, if it closed within ``seconds`` (else None)."""
    got = b""
    try:
        async with asyncio.timeout(seconds):
            while piece := await reader.read(65536):
                got += piece
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return got


async def test_partial_headers_are_cut_at_the_header_timeout(
    make_creds: MakeCreds, spawn: Spawn
) -> None:
    """A connection trickling its headers was held 75 s (and longer, a byte at a time)."""
    gw = await spawn(make_creds(gateway={"limits": SLOW}))
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", gw.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    started = time.monotonic()
    writer.write(b"POST /v1/projects/alpha/chat/completions HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        for i in range(40):
            await asyncio.sleep(0.2)
            writer.write(b"X-Slow-%d: y\r\n" % i)

    trickling = asyncio.create_task(trickle())
    try:
        assert await closed_within(reader, 4) is not None, "held past the header timeout"
        assert await closed_within(idle_reader, 4) is not None, "a silent one too"
        assert time.monotonic() - started < 3
    finally:
        trickling.cancel()
        writer.close()
        idle_writer.close()


async def test_a_slow_body_is_cut_at_the_body_timeout(make_creds: MakeCreds, spawn: Spawn) -> None:
    """An authenticated request trickling its body held its connection (and its
    in-flight slot) indefinitely."""
    creds = make_creds(gateway={"limits": SLOW})
    gw = await spawn(creds)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    body = b'{"messages":[{"role":"user","content":"' + b"a" * 400 + b'"}]}'
    writer.write(
        b"POST /v1/projects/alpha/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + creds.key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    started = time.monotonic()

    async def trickle() -> None:
        for i in range(0, len(body), 4):
            writer.write(body[i : i + 4])
            await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    try:
        answer = await closed_within(reader, 8)
        assert answer is not None, "held past the body timeout"
        # The 408 at the body timeout; closed once the rest stops being drained.
        assert time.monotonic() - started < 6
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"limits.body_timeout_seconds" in answer
    finally:
        trickling.cancel()
        writer.close()


async def test_connections_past_the_per_address_cap_are_closed_and_probes_answer(
    make_creds: MakeCreds, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    """1,007 sockets from one client filled the fd table and health probes failed."""
    gw = await spawn(make_creds(gateway={"limits": SLOW}))
    held = []
    try:
        for _ in range(12):  # from another loopback address than the probe's
            held.append(
                await asyncio.open_connection("127.0.0.1", gw.port, local_addr=("127.0.0.2", 0))
            )
        # At once: the kept ones are closed by the header timeout (1 s) after a while.
        outcomes = await asyncio.gather(*(closed_within(reader, 0.5) for reader, _ in held))
        kept = [o for o in outcomes if o is None]
        assert len(kept) == 5, outcomes
        assert all(o == b"" for o in outcomes if o is not None)  # closed unanswered
        for _ in range(3):
            async with http.get(gw.url("/healthz")) as resp:
                assert resp.status == 200
        # Once the kept ones are gone (the header timeout), the address is served again.
        await asyncio.sleep(1.0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.port, local_addr=("127.0.0.2", 0)
        )
        held.append((reader, writer))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await closed_within(reader, 3)
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        for _, writer in held:
            writer.close()
