"""Expired holds: a crashed gateway's in-flight requests are billed at their worst case.

A hold that expires unsettled is an answer nobody recorded: it is charged at the bound
it was admitted under, on every counter it held, with an ``expired_hold`` ledger event.
However many expired (more than a script's batch: 50 here), caps, refusal bodies,
``/usage`` and the reserved gauge see them charged, never as phantom reservations. A
gateway that was only slow settles late: its truth replaces the worst case, once.

Store-level tests move the clock with ``now_ms``; the process test SIGKILLs a real
``gateway serve`` with 50 streams in flight and waits past its reservation ttl.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.budget import (
    BudgetExceeded,
    BudgetStore,
    Refusal,
    org_counters,
    project_counters,
)
from gateway.config import BudgetScope, Config, OrgConfig, Project, load_config, org_caps
from gateway.usage_report import usage_report
from tests.support.billing import amounts, cost, held, report_row, used
from tests.support.clock import T_JUNE
from tests.support.harness import GatewayFactory, bearer, chat_body, key_prefix, write_config
from tests.support.metrics import gauge, metric
from tests.support.process import GatewayProcess
from tests.support.redis import counter, parse_event, stream_entries, tag, window_ids
from tests.support.upstream import FakeUpstream, Recorded, Reply, default_reply, openai_stream

W_IN, W_OUT = 33, 100  # chat_body("Hello"): input bound 33, max_output_tokens 100
W = W_IN + W_OUT
W_COST = cost(W_IN, W_OUT)  # 64_950 nano-USD
EVENTS = 1000  # ledger bound of the store-level tests


def event(request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "project": "alpha", "project_id": "prj_alpha"}


async def ledger(redis: Any, tag_: str) -> list[tuple[str, dict[str, Any]]]:
    return [(i, parse_event(e)) for i, e in await stream_entries(redis, tag_ + "ledger")]


@pytest.fixture
def make_config(tmp_path: Path, redis_url: str) -> Callable[..., Config]:
    count = 0

    def factory(budgets: dict[str, Any], **gateway: Any) -> Config:
        nonlocal count
        count += 1
        creds = write_config(
            tmp_path / f"cfg{count}",
            "http://127.0.0.1:9/v1",
            redis_url,
            projects={"alpha": {"budgets": budgets}},
            gateway=gateway or None,
        )
        return load_config(creds.config_dir, creds.env)

    return factory


def alpha(config: Config) -> Project:
    return config.projects["alpha"]


# ----------------------------------------------------------------------------- store level


async def test_an_expired_hold_is_charged_its_worst_case_on_every_counter_with_an_event(
    make_store: Callable[..., BudgetStore], make_config: Callable[..., Config], redis: Redis
) -> None:
    store = make_store(ttl_s=1)
    project = alpha(
        make_config(
            {
                "project": {"month": {"total_tokens": 100_000}},
                "per_key": {"month": {"input_tokens": 5_000}},
                "per_user": {"day": {"total_tokens": 10_000}},
            }
        )
    )
    counters = project_counters(project, "key_main", "user-1")
    crashed = await store.reserve(
        project.id,
        "rsv-crashed",
        counters,
        amounts(W_IN, W_OUT),
        now_ms=T_JUNE,
        event=event("req-crashed"),
        ledger_max_events=EVENTS,
    )
    assert len(crashed.counter_keys) == 5  # project day/month/lifetime, key month, user day
    # The next call after its expiry charges it, on every counter it held.
    nxt = await store.reserve(
        project.id, "rsv-next", counters, amounts(1, 1), now_ms=T_JUNE + 1001,
        ledger_max_events=EVENTS,
    )  # fmt: skip
    assert set(nxt.counter_keys) == set(crashed.counter_keys)
    for key in crashed.counter_keys:
        assert await counter(redis, key) == held(1, 1, 750, u=(W_IN, W_OUT, W_COST)), key
    [(_, expired)] = await ledger(redis, crashed.project_tag)
    assert expired == {
        "request_id": "req-crashed",
        "project": "alpha",
        "project_id": "prj_alpha",
        "kind": "expired_hold",
        "reservation_id": "rsv-crashed",
        "input_tokens": W_IN,
        "output_tokens": W_OUT,
        "total_tokens": W,
        "cost_nano_usd": W_COST,
        "expired_at": (T_JUNE + 1000) / 1000,
        "ts": (T_JUNE + 1001) / 1000,
        "estimated": True,
        "reason": "hold expired unsettled (gateway gone): charged at its worst case",
        "settled": "expired",
    }
    assert await redis.hkeys(crashed.project_tag + "rsv") == [b"rsv-next"]
    # The extend of a charged hold fails: its request holds nothing any more.
    assert await store.extend(crashed, now_ms=T_JUNE + 1002) is False


async def test_an_expired_org_hold_is_charged_on_the_org_counters_and_its_ledger(
    make_store: Callable[..., BudgetStore], redis: Redis
) -> None:
    store = make_store(ttl_s=1)
    org = OrgConfig(budgets=BudgetScope(month={"total_tokens": 5_000}))
    counters = org_counters(org_caps(org))
    hold = await store.reserve(
        "acme", "rsv-org", counters, amounts(W_IN, W_OUT), now_ms=T_JUNE, kind="org",
        event=event("req-org") | {"hold": "org"}, ledger_max_events=EVENTS,
    )  # fmt: skip
    otag = store.tag("acme", "org")
    assert hold.project_tag == otag
    await store.drain(otag, EVENTS, now_ms=T_JUNE + 1001)
    for key in hold.counter_keys:
        assert await counter(redis, key) == used(W_IN, W_OUT, W_COST)
    [(_, expired)] = await ledger(redis, otag)
    assert (expired["kind"], expired["hold"], expired["request_id"], expired["total_tokens"]) == (
        "expired_hold",
        "org",
        "req-org",
        W,
    )


async def test_fifty_expired_holds_are_all_charged_before_a_cap_answers(
    make_store: Callable[..., BudgetStore], make_config: Callable[..., Config], redis: Redis
) -> None:
    """More expired holds than a script charges per call: the refusal's body still shows
    every one as used, none as reserved, and a request sized to the true room fits."""
    store = make_store(ttl_s=1)
    project = alpha(make_config({"project": {"month": {"total_tokens": 51 * W}}}))
    counters = project_counters(project, None, None)
    for i in range(50):
        await store.reserve(
            project.id, f"rsv-{i}", counters, amounts(W_IN, W_OUT), now_ms=T_JUNE,
            event=event(f"req-{i}"), ledger_max_events=EVENTS,
        )  # fmt: skip
    later = T_JUNE + 1001
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(
            project.id, "too-big", counters, amounts(W_IN + 1, W_OUT), now_ms=later,
            ledger_max_events=EVENTS,
        )  # fmt: skip
    assert info.value.refusal == Refusal(
        "project", "month", "total_tokens", 51 * W, 50 * W, 0, W + 1, "m202606"
    )
    ptag = tag(store.key_prefix)
    assert await redis.exists(ptag + "rsv", ptag + "rsvexp") == 0
    events = [e for _, e in await ledger(redis, ptag)]
    assert sorted(e["request_id"] for e in events) == sorted(f"req-{i}" for i in range(50))
    assert {(e["kind"], e["total_tokens"], e["cost_nano_usd"]) for e in events} == {
        ("expired_hold", W, W_COST)
    }
    fits = await store.reserve(project.id, "fits", counters, amounts(W_IN, W_OUT), now_ms=later)
    assert await counter(redis, fits.counter_keys[1]) == held(
        W_IN, W_OUT, W_COST, u=(50 * W_IN, 50 * W_OUT, 50 * W_COST)
    )


async def test_a_request_sized_to_the_room_fits_whatever_was_left_uncharged(
    make_store: Callable[..., BudgetStore], make_config: Callable[..., Config], redis: Redis
) -> None:
    """Admission does not wait for the batch: an expired hold weighs the same charged or
    not. The first reserve after 50 expired charges one batch and admits; the next calls
    charge the rest."""
    store = make_store(ttl_s=1)
    project = alpha(make_config({"project": {"month": {"total_tokens": 51 * W}}}))
    counters = project_counters(project, None, None)
    for i in range(50):
        await store.reserve(
            project.id, f"rsv-{i}", counters, amounts(W_IN, W_OUT), now_ms=T_JUNE,
            ledger_max_events=EVENTS, event=event(f"req-{i}"),
        )  # fmt: skip
    later = T_JUNE + 1001
    fits = await store.reserve(
        project.id, "fits", counters, amounts(W_IN, W_OUT), now_ms=later, ledger_max_events=EVENTS
    )
    month = fits.counter_keys[1]
    state = await counter(redis, month)
    assert state["u2"] + state["r2"] == 51 * W
    assert state["u2"] < 50 * W  # one batch charged, not all
    await store.drain(fits.project_tag, EVENTS, now_ms=later)
    assert await counter(redis, month) == held(
        W_IN, W_OUT, W_COST, u=(50 * W_IN, 50 * W_OUT, 50 * W_COST)
    )
    assert len(await ledger(redis, fits.project_tag)) == 50


async def test_a_late_settle_of_a_charged_hold_replaces_the_worst_case_once(
    make_store: Callable[..., BudgetStore], make_config: Callable[..., Config], redis: Redis
) -> None:
    """A gateway that was only slow settles after its hold was charged at the worst case:
    the truth replaces that charge (the ledger entry says reconciled and names the
    expired-hold event), and a retried settle changes nothing."""
    store = make_store(ttl_s=1)
    project = alpha(make_config({"project": {"month": {"total_tokens": 10_000}}}))
    counters = project_counters(project, None, None)
    slow = await store.reserve(
        project.id, "rsv-slow", counters, amounts(W_IN, W_OUT), now_ms=T_JUNE,
        event=event("req-slow"), ledger_max_events=EVENTS,
    )  # fmt: skip
    await store.drain(slow.project_tag, EVENTS, now_ms=T_JUNE + 2000)
    for key in slow.counter_keys:
        assert await counter(redis, key) == used(W_IN, W_OUT, W_COST)
    assert await redis.ttl(f"{slow.project_tag}xh:rsv-slow") in range(295, 302)

    truth = amounts(20, 50)
    usage_event = {"request_id": "req-slow", "input_tokens": 20, "output_tokens": 50}
    for attempt in range(2):  # the second one: a retry after an unanswered call
        got = await store.settle(
            slow, truth, now_ms=T_JUNE + 2001 + attempt, ledger=usage_event,
            ledger_max_events=EVENTS,
        )  # fmt: skip
        assert got is False
        for key in slow.counter_keys:
            assert await counter(redis, key) == used(20, 50, truth.cost_nano), attempt
    [(expired_id, expired), (_, reconciled)] = await ledger(redis, slow.project_tag)
    assert expired["kind"] == "expired_hold"
    assert reconciled == usage_event | {"settled": "reconciled"}
    [(_, raw)] = await stream_entries(redis, slow.project_tag + "ledger", newest=1)
    assert raw[b"reconciles"].decode() == expired_id
    assert await redis.exists(f"{slow.project_tag}xh:rsv-slow") == 0


async def test_a_late_release_of_a_charged_hold_charges_nothing(
    make_store: Callable[..., BudgetStore], make_config: Callable[..., Config], redis: Redis
) -> None:
    """A hold the gateway gives back (its request was refused by a later step, or its
    reserve call timed out) is not a request served: released late, the worst-case
    charge is taken back."""
    store = make_store(ttl_s=1)
    project = alpha(make_config({"project": {"month": {"total_tokens": 10_000}}}))
    counters = project_counters(project, None, None)
    hold = await store.reserve(project.id, "rsv", counters, amounts(W_IN, W_OUT), now_ms=T_JUNE)
    await store.drain(hold.project_tag, 0, now_ms=T_JUNE + 2000)
    assert (await counter(redis, hold.counter_keys[1]))["u2"] == W
    await store.release(hold)
    await store.release(hold)
    for key in hold.counter_keys:
        assert await counter(redis, key) == used(0, 0, 0)


# ----------------------------------------------------------------------------- readers


async def test_usage_report_charges_every_expired_hold_before_it_reads(
    make_store: Callable[..., BudgetStore], make_config: Callable[..., Config], redis: Redis
) -> None:
    """/usage (and ``gateway usage``) shows expired holds as used, however many: nothing
    ran on the project since they expired."""
    config = make_config({"project": {"month": {"total_tokens": 100 * W}}})
    store = make_store(ttl_s=1, prefix=config.gateway.redis.key_prefix)
    project = alpha(config)
    counters = project_counters(project, None, None)
    await asyncio.gather(
        *(
            store.reserve(project.id, f"rsv-{i}", counters, amounts(W_IN, W_OUT),
                          event=event(f"req-{i}"), ledger_max_events=EVENTS)
            for i in range(50)
        )
    )  # fmt: skip
    await asyncio.sleep(1.1)
    report = await usage_report(store, config, project)
    month = next(c for c in report["counters"] if c["window"] == "month")
    dims = month["dimensions"]
    assert {d: (v["used"], v["reserved"]) for d, v in dims.items()} == {
        "input_tokens": (50 * W_IN, 0),
        "output_tokens": (50 * W_OUT, 0),
        "total_tokens": (50 * W, 0),
        "cost_nano_usd": (50 * W_COST, 0),
    }
    assert len(await ledger(redis, store.tag(project.id))) == 50


async def test_the_reserved_gauge_excludes_expired_holds(
    make_gateway: GatewayFactory, redis_url: str
) -> None:
    """/metrics: 50 holds a gateway left behind count as used once expired, not as
    reserved (the gauge is refreshed at scrape time)."""
    client, config, _ = await make_gateway(
        projects={"alpha": {"budgets": {"project": {"month": {"total_tokens": 100 * W}}}}}
    )
    async with Redis.from_url(redis_url) as r:
        store = BudgetStore(r, config.gateway.redis.key_prefix, 1.0, 1)
        project = alpha(config)
        counters = project_counters(project, "key_main", None)
        for i in range(50):
            await store.reserve(
                project.id, f"rsv-{i}", counters, amounts(W_IN, W_OUT), event=event(f"req-{i}"),
                ledger_max_events=EVENTS,
            )  # fmt: skip
        labels = {"project": "alpha", "window": "month"}
        assert await metric(client, "gateway_budget_reserved_tokens", **labels) == 50 * W
        await asyncio.sleep(1.1)
        assert await metric(client, "gateway_budget_reserved_tokens", **labels) == 0
        assert await metric(client, "gateway_budget_used_tokens", type="total", **labels) == 50 * W
        assert len(await ledger(r, store.tag(project.id))) == 50


# ----------------------------------------------------------------------------- a real crash

CHAT = "/v1/projects/alpha/chat/completions"
IN_FLIGHT = 50
# The shortest the provider timeouts below allow (8 + 1 + 5 s): a stream lives up to 8 s,
# time enough to start 50 on a loaded machine before the kill.
TTL = 14


@pytest.mark.serial
async def test_a_sigkilled_gateway_s_fifty_requests_are_billed_at_their_worst_case(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, redis: Redis,
    processes: list[GatewayProcess],
) -> None:  # fmt: skip
    """50 streams in flight on a gateway killed with SIGKILL. Past the reservation ttl,
    on a second gateway: a request one token over the true room is refused with every
    hold as used and none as reserved; /usage shows the holds charged at their worst
    case, nothing reserved; the ledger has one expired_hold event per request; the
    reserved gauge is 0; a request sized to the true room is admitted."""
    cap = (IN_FLIGHT + 1) * W  # the 50 worst cases and one more request
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        projects={"alpha": {"budgets": {"project": {"month": {"total_tokens": cap}}}}},
        gateway={
            "limits": {"reservation_ttl_seconds": TTL},
            "providers": {
                "upstream": {
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key_env": "TEST_PROVIDER_KEY",
                    "timeouts": {"connect": 2, "first_byte": 2, "idle": 1, "total": 8},
                }
            },
        },
    )
    victim = GatewayProcess(creds, tmp_path / "victim.log")
    survivor = GatewayProcess(creds, tmp_path / "survivor.log")
    processes += [victim, survivor]
    await asyncio.gather(victim.start(timeout=30), survivor.start(timeout=30))
    ptag = tag(key_prefix(creds))
    month_key = f"{ptag}p:{(await window_ids(redis))['month']}"

    def replies(rec: Recorded) -> Reply:
        if rec.json().get("stream"):  # ~20 s: far past the kill
            words = [f"w{i:03d} " for i in range(200)]
            sse = openai_stream(words, prompt_tokens=20, completion_tokens=200)
            return Reply(sse=sse, slice_size=100, delay_between_slices=0.1)
        return default_reply(rec)  # 11 + 3 tokens

    upstream.default = replies
    request_ids: list[str] = []
    started = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def stream() -> None:
            try:
                async with http.post(
                    victim.url(CHAT), json=chat_body("Hello", stream=True),
                    headers=bearer(creds.key),
                ) as resp:  # fmt: skip
                    assert resp.status == 200
                    request_ids.append(resp.headers["X-Request-Id"])
                    if len(request_ids) == IN_FLIGHT:
                        started.set()
                    await resp.read()
            except (aiohttp.ClientError, asyncio.IncompleteReadError):
                pass  # cut by the kill

        streams = [asyncio.create_task(stream()) for _ in range(IN_FLIGHT)]
        await asyncio.wait_for(started.wait(), timeout=8)
        assert (await counter(redis, month_key))["r2"] == IN_FLIGHT * W
        t_held = time.monotonic()
        victim.kill()
        await asyncio.gather(*streams)
        await asyncio.sleep(max(0.0, t_held + TTL + 1.0 - time.monotonic()))

        # One token over the true room: refused, the body telling the truth.
        async with http.post(
            survivor.url(CHAT), json=chat_body("Hello!"), headers=bearer(creds.key)
        ) as resp:
            assert resp.status == 402, await resp.text()
            body = await resp.json()
        assert (body["used"], body["reserved"], body["requested"]) == (IN_FLIGHT * W, 0, W + 1)

        async with http.get(survivor.url("/v1/projects/alpha/usage"), headers=bearer(creds.key)) as resp:  # fmt: skip
            assert resp.status == 200
            report = await resp.json()
        month = report_row(report, "project", "month")
        assert {d: (v["used"], v["reserved"]) for d, v in month["dimensions"].items()} == {
            "input_tokens": (IN_FLIGHT * W_IN, 0),
            "output_tokens": (IN_FLIGHT * W_OUT, 0),
            "total_tokens": (IN_FLIGHT * W, 0),
            "cost_nano_usd": (IN_FLIGHT * W_COST, 0),
        }
        events = [e for _, e in await ledger(redis, ptag)]
        assert sorted(e["request_id"] for e in events) == sorted(request_ids)
        for e in events:
            assert (e["kind"], e["project"], e["hold"], e["settled"]) == (
                "expired_hold", "alpha", "project", "expired",
            )  # fmt: skip
            assert (e["input_tokens"], e["output_tokens"], e["cost_nano_usd"]) == (
                W_IN, W_OUT, W_COST,
            )  # fmt: skip

        async with http.get(survivor.metrics_url) as resp:
            text = await resp.text()
        labels = {"project": "alpha", "window": "month"}
        assert gauge(text, "gateway_budget_reserved_tokens", **labels) == 0
        assert gauge(text, "gateway_budget_used_tokens", type="total", **labels) == IN_FLIGHT * W

        # Sized to the true room: admitted.
        async with http.post(
            survivor.url(CHAT), json=chat_body("Hello"), headers=bearer(creds.key)
        ) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
