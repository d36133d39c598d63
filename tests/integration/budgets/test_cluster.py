"""Budgets and rate limits on a real three-master Redis Cluster, through the gateway.

The gateway is pointed at ``redis+cluster://`` (one seed node). Every budget script
touches one slot: a project's keys share the ``{prj:<id>}`` hash tag, an org's the
``{org:<id>}`` tag. The first test shows where the keys land (different slots, and
different nodes), so that the other tests are meaningful.

Numbers: ``chat_body("Hello")`` has an input bound of 33 tokens, ``max_output_tokens``
is 100: a worst case of 133 tokens (64_950 nano-USD); the fake reports 11 + 3 tokens.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from pytest_aiohttp import AiohttpClient
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.budget import Amounts, BudgetStore, org_counters, project_counters
from gateway.config import load_config, org_caps
from gateway.http.app import create_app
from gateway.serve.embedded_redis import find_redis_server
from tests.support.billing import cost, used
from tests.support.harness import GatewayFactory, bearer, chat_body, edit_gateway_yaml, write_config
from tests.support.ports import free_port
from tests.support.redis import counter, parse_event, ping, stream_entries, tag, window_ids
from tests.support.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    UsagePerRequest,
    default_reply,
    openai_completion,
    openai_stream,
)

# The Redis Cluster is started once for the module: one worker is to run every test of
# it (--dist loadgroup; on pytest 9.2 each worker running one of them starts its own
# cluster, pytest-xdist issue 1386: slower, as correct).
pytestmark = pytest.mark.xdist_group("cluster")

WORST = 133
SMALL = 14
SMALL_COST = cost(11, 3)  # 3_450


def url(project: str = "alpha") -> str:
    return f"/v1/projects/{project}/chat/completions"


@dataclass
class Cluster:
    ports: list[int]
    slots: list[tuple[int, int, int]]  # (first slot, last slot, port of the master)

    @property
    def seed(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def port_of(self, key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for lo, hi, port in self.slots if lo <= slot <= hi)


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def command(node: redis_sync.Redis, *args: str | int) -> Any:
    """One command to one node (CLUSTER INFO, SLOTS...)."""
    # redis-py leaves execute_command unannotated.
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three masters on free local ports, no replicas, no persistence."""
    redis_cli = shutil.which("redis-cli")
    assert redis_cli, "redis-cli is needed to create the test cluster"
    base = tmp_path_factory.mktemp("cluster")
    ports, buses = _free_ports(6)[:3], _free_ports(6)[3:]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, bus in zip(ports, buses, strict=True):
            node_dir = base / f"node-{port}"
            node_dir.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        find_redis_server(),
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-port", str(bus),  # port + 10000 may be out of range
                        "--cluster-config-file", str(node_dir / f"nodes-{port}.conf"),
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while not all(ping(p) for p in ports):
            assert time.monotonic() < deadline, "cluster nodes did not start"
            assert all(p.poll() is None for p in procs), "a cluster node exited"
            time.sleep(0.05)
        created = subprocess.run(
            [
                redis_cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        clients = [redis_sync.Redis(port=p) for p in ports]
        deadline = time.monotonic() + 20
        while True:
            infos = [command(c, "CLUSTER", "INFO") for c in clients]
            if all(b"cluster_state:ok" in info for info in infos):
                break
            assert time.monotonic() < deadline, infos
            time.sleep(0.05)
        slots = [
            (int(lo), int(hi), int(master[1]))
            for lo, hi, master, *_ in command(clients[0], "CLUSTER", "SLOTS")
        ]
        for c in clients:
            c.close()
        assert sorted(port for _, _, port in slots) == sorted(ports)
        yield Cluster(ports, sorted(slots))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def rc(cluster: Cluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def gateway_on(
    cluster: Cluster, tmp_path: Path, upstream: FakeUpstream, aiohttp_client: AiohttpClient
) -> Any:
    """A gateway on the cluster; ``org_budgets`` sets caps on org acme."""
    count = 0

    async def factory(
        *, org_budgets: dict[str, Any] | None = None, **overrides: Any
    ) -> tuple[Any, Any, Any]:
        nonlocal count
        count += 1
        creds = write_config(
            tmp_path / f"cluster-cfg{count}", upstream.base_url, cluster.seed, **overrides
        )
        if org_budgets is not None:
            edit_gateway_yaml(creds, lambda d: d["orgs"]["acme"].update(budgets=org_budgets))
        config = load_config(creds.config_dir, creds.env)
        client = await aiohttp_client(
            create_app(config, cluster.seed), server_kwargs={"handler_cancellation": True}
        )
        return client, config, creds

    return factory


# Three projects whose tags hash to the three masters' slot ranges (with the usual even
# split of 16384 slots), and org acme's tag on yet another slot.
PROJECTS = {"alpha": "prj_alpha", "beta": "prj_beta", "delta": "prj_delta"}


async def test_projects_and_the_org_land_on_different_slots_and_nodes(
    cluster: Cluster, gateway_on: GatewayFactory, rc: RedisCluster
) -> None:
    client, config, creds = await gateway_on(
        projects={"delta": {}}, org_budgets={"month": {"total_tokens": 1_000_000}}
    )
    prefix = config.gateway.redis.key_prefix
    ids = await window_ids(rc)
    for project in PROJECTS:
        resp = await client.post(url(project), json=chat_body(), headers=bearer(creds.key))
        assert resp.status == 200, await resp.text()
    keys = {name: f"{tag(prefix, pid)}p:{ids['month']}" for name, pid in PROJECTS.items()}
    keys["org"] = f"{tag(prefix, 'acme', 'org')}o:{ids['month']}"
    slots = {name: key_slot(key.encode()) for name, key in keys.items()}
    nodes = {name: cluster.port_of(key) for name, key in keys.items()}
    print(f"\n[cluster] slots {slots} nodes {nodes} masters {cluster.slots}")
    assert len(set(slots.values())) == 4
    assert len({nodes[p] for p in PROJECTS}) == 3  # one project per master
    assert nodes["org"] != nodes["delta"]  # the org step and delta's step: two nodes
    # Each key lives on the master that owns its slot, and only there.
    for name, key in keys.items():
        for port in cluster.ports:
            node = redis_sync.Redis(port=port)
            try:
                assert command(node, "CLUSTER", "KEYSLOT", key) == slots[name]
                held = command(node, "CLUSTER", "COUNTKEYSINSLOT", slots[name])
                assert (held > 0) == (port == nodes[name]), (name, port, held)
            finally:
                node.close()
    # One request per project; the org's counter adds up all three.
    for name in PROJECTS:
        assert await counter(rc, keys[name]) == used(11, 3, SMALL_COST)
    assert await counter(rc, keys["org"]) == used(33, 9, 3 * SMALL_COST)


async def test_settle_equals_the_reported_usage(
    gateway_on: GatewayFactory, upstream: FakeUpstream, rc: RedisCluster
) -> None:
    client, config, creds = await gateway_on(projects={"delta": {}})
    prefix = config.gateway.redis.key_prefix
    upstream.script(
        Reply(json=openai_completion(prompt_tokens=30, completion_tokens=57)),
        Reply(sse=openai_stream(["a", "b"], prompt_tokens=25, completion_tokens=40)),
    )
    auth = bearer(creds.key)
    assert (await client.post(url("delta"), json=chat_body(), headers=auth)).status == 200
    resp = await client.post(url("delta"), json=chat_body(stream=True), headers=auth)
    assert resp.status == 200
    await resp.read()
    ids = await window_ids(rc)
    expected = used(55, 97, cost(55, 97))
    for window_id in ids.values():
        assert await counter(rc, f"{tag(prefix, 'prj_delta')}p:{window_id}") == expected
    assert await rc.hlen(tag(prefix, "prj_delta") + "rsv") == 0


async def test_402_at_the_cap(
    gateway_on: GatewayFactory, upstream: FakeUpstream, rc: RedisCluster
) -> None:
    client, config, creds = await gateway_on(
        projects={"beta": {"budgets": {"project": {"month": {"total_tokens": 150}}}}}
    )
    prefix = config.gateway.redis.key_prefix
    auth = bearer(creds.key)
    for _ in range(2):  # 133 fits (settles 14), 14 + 133 fits (settles 14)
        assert (await client.post(url("beta"), json=chat_body(), headers=auth)).status == 200
    resp = await client.post(url("beta"), json=chat_body(), headers=auth)
    assert resp.status == 402
    body = (await resp.json())["error"]  # beta speaks the openai wire profile
    assert (body["scope"], body["window"], body["dimension"]) == (
        "project",
        "month",
        "total_tokens",
    )
    assert (body["limit"], body["used"], body["reserved"], body["requested"]) == (150, 28, 0, 133)
    ids = await window_ids(rc)
    assert await counter(rc, f"{tag(prefix, 'prj_beta')}p:{ids['month']}") == used(
        22, 6, 2 * SMALL_COST
    )
    assert len(upstream.requests) == 2


async def test_concurrent_requests_cannot_overshoot(
    gateway_on: GatewayFactory, upstream: FakeUpstream, rc: RedisCluster
) -> None:
    worst = 16 + 8 + 4 + len("req-00") + 100  # 134
    cap = 5 * worst + worst // 2  # five worst cases fit, six do not
    fake = UsagePerRequest()
    upstream.default = fake
    client, config, creds = await gateway_on(
        projects={"delta": {"budgets": {"project": {"month": {"total_tokens": cap}}}}}
    )
    prefix = config.gateway.redis.key_prefix

    async def one(n: int) -> tuple[str, int, Any]:
        text = f"req-{n:02d}"
        resp = await client.post(
            url("delta"), json=chat_body(text, stream=n % 2 == 1), headers=bearer(creds.key)
        )
        raw = await resp.text()
        return text, resp.status, raw

    results = await asyncio.gather(*(one(n) for n in range(60)))
    statuses = [s for _, s, _ in results]
    assert set(statuses) <= {200, 402}, statuses
    admitted = {t for t, s, _ in results if s == 200}
    assert len(admitted) >= 5
    assert set(fake.reported) == admitted
    ids = await window_ids(rc)
    state = await counter(rc, f"{tag(prefix, 'prj_delta')}p:{ids['month']}")
    i = sum(fake.reported[t][0] for t in admitted)
    o = sum(fake.reported[t][1] for t in admitted)
    assert state == used(i, o, cost(i, o))
    assert state["u2"] <= cap
    assert await rc.hlen(tag(prefix, "prj_delta") + "rsv") == 0


async def test_rate_limit_429(
    gateway_on: GatewayFactory, upstream: FakeUpstream, rc: RedisCluster
) -> None:
    client, config, creds = await gateway_on(
        projects={"beta": {"rate_limits": {"requests_per_minute": 3}}}
    )
    prefix = config.gateway.redis.key_prefix
    results = await asyncio.gather(
        *(client.post(url("beta"), json=chat_body(), headers=bearer(creds.key)) for _ in range(5))
    )
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 200, 429, 429]
    for resp in results:
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            # beta speaks the openai wire profile
            error = (await resp.json())["error"]
            assert error["message"].startswith("requests per minute limit (3) reached")
    ids = await window_ids(rc)
    assert await counter(rc, f"{tag(prefix, 'prj_beta')}p:{ids['month']}") == used(
        33, 9, 3 * SMALL_COST
    )
    assert await rc.exists(tag(prefix, "prj_beta") + "rl:rpm") == 1


async def test_org_caps_across_nodes(
    cluster: Cluster, gateway_on: GatewayFactory, upstream: FakeUpstream, rc: RedisCluster
) -> None:
    client, config, creds = await gateway_on(
        projects={"delta": {"budgets": {"project": {"month": {"total_tokens": 140}}}}},
        org_budgets={"day": {"total_tokens": 300}},
    )
    prefix = config.gateway.redis.key_prefix
    ids = await window_ids(rc)
    org_key = f"{tag(prefix, 'acme', 'org')}o:{ids['day']}"
    delta_key = f"{tag(prefix, 'prj_delta')}p:{ids['month']}"
    assert cluster.port_of(org_key) != cluster.port_of(delta_key)
    auth = bearer(creds.key)
    # delta: 133 fits both steps, settles 14 on both counters (two nodes).
    assert (await client.post(url("delta"), json=chat_body(), headers=auth)).status == 200
    # The project step refuses (14 + 133 > 140) after the org step admitted: undone.
    resp = await client.post(url("delta"), json=chat_body(), headers=auth)
    assert resp.status == 402
    assert (await resp.json())["scope"] == "project"
    assert await counter(rc, org_key) == used(11, 3, SMALL_COST)
    assert await rc.hlen(tag(prefix, "acme", "org") + "rsv") == 0
    # alpha, same org (its tag on another slot than alpha's): three requests fit.
    assert (await client.post(url("alpha"), json=chat_body(), headers=auth)).status == 200
    assert (await client.post(url("alpha"), json=chat_body(), headers=auth)).status == 200
    assert (await client.post(url("alpha"), json=chat_body(), headers=auth)).status == 200
    assert (await counter(rc, org_key))["u2"] == 4 * SMALL
    # 56 used: 56 + 133 fits, 56 + 133 + 133 > 300: of two at once, one gets 402 "org".
    upstream.default = _slow_default
    results = await asyncio.gather(
        *(client.post(url("alpha"), json=chat_body(), headers=auth) for _ in range(2))
    )
    assert sorted(r.status for r in results) == [200, 402]
    refused = next(r for r in results if r.status == 402)
    body = await refused.json()
    assert (body["scope"], body["window"], body["dimension"]) == ("org", "day", "total_tokens")
    assert (body["limit"], body["used"], body["reserved"], body["requested"]) == (
        300,
        4 * SMALL,
        WORST,
        WORST,
    )
    assert await counter(rc, org_key) == used(55, 15, 5 * SMALL_COST)


def _slow_default(rec: Recorded) -> Reply:
    reply = default_reply(rec)
    reply.delay_before_headers = 0.3
    return reply


async def test_usage_endpoint(
    cluster: Cluster, gateway_on: GatewayFactory, upstream: FakeUpstream, rc: RedisCluster
) -> None:
    client, config, creds = await gateway_on(
        projects={
            "delta": {
                "budgets": {
                    "project": {"month": {"total_tokens": 100_000}},
                    "per_key": {"day": {"cost_usd": "1"}},
                }
            }
        },
        org_budgets={"month": {"input_tokens": 500_000}},
    )
    prefix = config.gateway.redis.key_prefix
    auth = bearer(creds.key)
    assert (await client.post(url("delta"), json=chat_body(), headers=auth)).status == 200
    resp = await client.get("/v1/projects/delta/usage", headers=bearer(creds.read_key))
    assert resp.status == 200, await resp.text()
    report = await resp.json()
    resp = await client.get("/v1/projects/delta/usage", headers=auth)
    by_key = await resp.json()
    ids = await window_ids(rc)
    rows = {(r["scope"], r["window"]): r for r in by_key["counters"]}
    assert set(rows) == {
        ("project", "day"),
        ("project", "month"),
        ("project", "lifetime"),
        ("key", "day"),
        ("org", "month"),
    }
    # The report reads counters on two nodes (delta's and the org's).
    assert cluster.port_of(tag(prefix, "prj_delta")) != cluster.port_of(tag(prefix, "acme", "org"))
    for (scope, window), row in rows.items():
        assert row["window_id"] == ids[window]
        key = {
            "project": f"{tag(prefix, 'prj_delta')}p:{ids[window]}",
            "key": f"{tag(prefix, 'prj_delta')}k:key_main:{ids[window]}",
            "org": f"{tag(prefix, 'acme', 'org')}o:{ids[window]}",
        }[scope]
        state = await counter(rc, key)
        for d, dim in enumerate(("input_tokens", "output_tokens", "total_tokens", "cost_nano_usd")):
            assert row["dimensions"][dim]["used"] == state[f"u{d}"], (scope, window, dim)
            assert row["dimensions"][dim]["reserved"] == state[f"r{d}"]
    assert rows[("project", "month")]["dimensions"]["total_tokens"] == {
        "used": SMALL,
        "reserved": 0,
        "cap": 100_000,
    }
    assert rows[("org", "month")]["dimensions"]["input_tokens"] == {
        "used": 11,
        "reserved": 0,
        "cap": 500_000,
    }
    assert rows[("key", "day")]["dimensions"]["cost_nano_usd"]["cap"] == 1_000_000_000
    read_rows = {(r["scope"], r["window"]) for r in report["counters"]}
    assert ("org", "month") in read_rows
    assert ("project", "month") in read_rows


async def test_ledger_event(
    gateway_on: GatewayFactory, upstream: FakeUpstream, rc: RedisCluster
) -> None:
    client, config, creds = await gateway_on(projects={"delta": {}})
    prefix = config.gateway.redis.key_prefix
    upstream.script(Reply(json=openai_completion(prompt_tokens=30, completion_tokens=57)))
    resp = await client.post(
        url("delta"),
        json=chat_body(),
        headers={**bearer(creds.key), "X-Request-Id": "cluster-ledger-0001"},
    )
    assert resp.status == 200
    events = await stream_entries(rc, tag(prefix, "prj_delta") + "ledger")
    assert len(events) == 1
    event = parse_event(events[0][1])
    assert event["client_request_id"] == "cluster-ledger-0001"
    assert event["request_id"] == resp.headers["X-Request-Id"]
    assert (event["project"], event["org"], event["key_id"]) == ("delta", "acme", "key_main")
    assert (int(event["input_tokens"]), int(event["output_tokens"])) == (30, 57)
    assert int(event["cost_nano_usd"]) == cost(30, 57)
    assert event["settled"] == "1"


async def test_expired_holds_are_charged_on_both_nodes(
    cluster: Cluster, gateway_on: GatewayFactory, rc: RedisCluster
) -> None:
    """A crashed gateway's holds on a project and its org (two nodes), more than a
    script's batch: /usage charges every one at its worst case (an expired_hold event
    each, on the tag's own ledger) and shows nothing reserved; a late settle of one of
    them replaces its worst case by the truth."""
    client, config, creds = await gateway_on(
        projects={"delta": {"budgets": {"project": {"month": {"total_tokens": 100_000}}}}},
        org_budgets={"month": {"total_tokens": 100_000}},
    )
    prefix = config.gateway.redis.key_prefix
    project = config.projects["delta"]
    store = BudgetStore(rc, prefix, 1.0, 1)
    worst = Amounts(33, 100, cost(33, 100))
    holds = []
    for i in range(40):
        holds.append(
            await store.reserve(
                "acme", f"o{i}", org_counters(org_caps(config.gateway.orgs["acme"])), worst,
                kind="org", event={"request_id": f"r{i}"}, ledger_max_events=100,
            )
        )  # fmt: skip
        holds.append(
            await store.reserve(
                project.id, f"p{i}", project_counters(project, None, None), worst,
                event={"request_id": f"r{i}"}, ledger_max_events=100,
            )
        )  # fmt: skip
    await asyncio.sleep(1.1)
    resp = await client.get("/v1/projects/delta/usage", headers=bearer(creds.key))
    assert resp.status == 200
    rows = {(r["scope"], r["window"]): r for r in (await resp.json())["counters"]}
    for scope in ("project", "org"):
        assert rows[(scope, "month")]["dimensions"]["total_tokens"] == {
            "used": 40 * WORST,
            "reserved": 0,
            "cap": 100_000,
        }
    for owner, kind in (("prj_delta", "prj"), ("acme", "org")):
        events = [
            parse_event(e) for _, e in await stream_entries(rc, tag(prefix, owner, kind) + "ledger")
        ]
        assert sorted(e["request_id"] for e in events) == sorted(f"r{i}" for i in range(40))
        assert {e["kind"] for e in events} == {"expired_hold"}
        assert await rc.hlen(tag(prefix, owner, kind) + "rsv") == 0
    slow = holds[1]  # project hold p0, charged 133 on each project counter
    assert await store.settle(slow, Amounts(11, 3, SMALL_COST)) is False
    month = f"{tag(prefix, 'prj_delta')}p:{(await window_ids(rc))['month']}"
    assert (await counter(rc, month))["u2"] == 39 * WORST + SMALL
