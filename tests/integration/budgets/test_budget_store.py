"""BudgetStore against a real Redis: reserve, settle, windows, expiry, cost, faults.

Every test uses its own uuid key prefix and moves the clock with ``now_ms`` (never
sleeping), so the numbers below are exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.budget import (
    Amounts,
    BudgetExceeded,
    BudgetStore,
    RateLimit,
    RateLimitExceeded,
    Refusal,
    Reservation,
    StoreUnavailable,
    keys,
    project_counters,
    resets_at,
)
from gateway.config import PriceConfig, Project, load_config
from gateway.errors import budget_exhausted_body
from gateway.usage import Usage, cost_nano
from tests.support.billing import MINI_CONFIG, amounts, held, used
from tests.support.clock import T_JUNE, ms
from tests.support.harness import StoreFactory, write_config
from tests.support.ports import free_port
from tests.support.redis import counter, get_int


async def snapshot(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every key under the prefix with its full content (hashes and zsets)."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(match=prefix + ":*"):
        reply = await redis.type(key)
        assert isinstance(reply, bytes)  # no decode_responses: every reply is bytes
        kind = reply.decode()
        if kind == "hash":
            out[key.decode()] = await redis.hgetall(key)
        elif kind == "zset":
            out[key.decode()] = await redis.zrange(key, 0, -1, withscores=True)
        else:
            out[key.decode()] = kind
    return out


@pytest.fixture
def make_project(tmp_path: Path, redis_url: str) -> Callable[[dict[str, Any]], Project]:
    count = 0

    def factory(budgets: dict[str, Any]) -> Project:
        nonlocal count
        count += 1
        creds = write_config(
            tmp_path / f"cfg{count}",
            "http://127.0.0.1:9/v1",
            redis_url,
            projects={"alpha": {"budgets": budgets}},
        )
        return load_config(creds.config_dir, creds.env).projects["alpha"]

    return factory


def keys_of(store: BudgetStore, *names: str) -> tuple[str, ...]:
    return tuple(f"{store.key_prefix}:{{prj:prj_alpha}}:{name}" for name in names)


# ----------------------------------------------------------------------------- reserve/settle


async def test_reserve_then_settle_moves_reserved_to_used(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store()
    project = make_project({"project": {"month": {"total_tokens": 1000}}})
    counters = project_counters(project, "key_main", None)
    worst = amounts(33, 100)
    assert worst.cost_nano == 33 * 150 + 100 * 600 == 64_950

    rsv = await store.reserve(project.id, "r1", counters, worst, now_ms=T_JUNE)
    # The key has no caps: only the project's three windows are touched.
    assert rsv.counter_keys == keys_of(store, "p:d20260615", "p:m202606", "p:all")
    assert rsv.project_tag == f"{store.key_prefix}:{{prj:prj_alpha}}:"
    for key in rsv.counter_keys:
        assert await counter(redis, key) == held(33, 100, 64_950)
    assert await redis.hkeys(rsv.project_tag + "rsv") == [b"r1"]
    assert await redis.zrange(rsv.project_tag + "rsvexp", 0, -1, withscores=True) == [
        (b"r1", float(T_JUNE + 60_000))
    ]

    actual = amounts(11, 3)
    assert actual.cost_nano == 11 * 150 + 3 * 600 == 3_450
    assert await store.settle(rsv, actual, now_ms=T_JUNE + 500) is True
    for key in rsv.counter_keys:
        assert await counter(redis, key) == used(11, 3, 3_450)
    assert await redis.exists(rsv.project_tag + "rsv", rsv.project_tag + "rsvexp") == 0

    # A second request adds up on the same counters.
    rsv2 = await store.reserve(project.id, "r2", counters, worst, now_ms=T_JUNE + 1000)
    assert rsv2.counter_keys == rsv.counter_keys
    for key in rsv.counter_keys:
        assert await counter(redis, key) == held(33, 100, 64_950, u=(11, 3, 3_450))
    assert await store.settle(rsv2, amounts(20, 7), now_ms=T_JUNE + 1500) is True
    for key in rsv.counter_keys:
        assert await counter(redis, key) == used(31, 10, 3_450 + 20 * 150 + 7 * 600)


async def test_key_and_user_counters_only_where_capped(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store()
    project = make_project(
        {
            "project": {"month": {"total_tokens": 10_000}},
            "per_key": {"day": {"input_tokens": 500}},
            "per_user": {"month": {"output_tokens": 700}, "lifetime": {"total_tokens": 900}},
        }
    )
    user_hash = hashlib.sha256(b"user-1").hexdigest()[:24]
    counters = project_counters(project, "key_main", "user-1")
    assert [(c.scope, c.suffix, c.window, c.caps) for c in counters] == [
        ("project", "p", "day", "-"),
        ("project", "p", "month", "2=10000"),
        ("project", "p", "lifetime", "-"),
        ("key", "k:key_main", "day", "0=500"),
        ("user", "u:" + user_hash, "month", "1=700"),
        ("user", "u:" + user_hash, "lifetime", "2=900"),
    ]
    rsv = await store.reserve(project.id, "r1", counters, amounts(33, 100), now_ms=T_JUNE)
    assert rsv.counter_keys == keys_of(
        store,
        "p:d20260615",
        "p:m202606",
        "p:all",
        "k:key_main:d20260615",
        f"u:{user_hash}:m202606",
        f"u:{user_hash}:all",
    )
    assert await store.settle(rsv, amounts(11, 3), now_ms=T_JUNE + 1) is True
    for key in rsv.counter_keys:
        assert await counter(redis, key) == used(11, 3, 3_450)

    # The project's and key's part is built once per key and reused: another user,
    # another key or none get their own counters, never a previous call's.
    other_hash = hashlib.sha256(b"user-2").hexdigest()[:24]
    again = project_counters(project, "key_main", "user-2")
    assert [c.suffix for c in again] == ["p", "p", "p", "k:key_main"] + [f"u:{other_hash}"] * 2
    assert [c.suffix for c in project_counters(project, "key_other", None)] == [
        "p", "p", "p", "k:key_other",
    ]  # fmt: skip
    assert [c.suffix for c in project_counters(project, None, None)] == ["p", "p", "p"]
    assert [c.suffix for c in project_counters(project, "key_main", None)] == [
        "p", "p", "p", "k:key_main",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- refusals


async def test_all_or_nothing_key_cap_refuses_and_nothing_changes(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store()
    project = make_project(
        {
            "project": {"month": {"total_tokens": 100_000}},
            "per_key": {"day": {"total_tokens": 100}},
        }
    )
    counters = project_counters(project, "key_main", None)
    rsv = await store.reserve(project.id, "r1", counters, amounts(33, 50), now_ms=T_JUNE)
    assert await store.settle(rsv, amounts(11, 3), now_ms=T_JUNE + 1) is True
    before = await snapshot(redis, store.key_prefix)
    counter_keys = keys_of(store, "p:d20260615", "p:m202606", "p:all", "k:key_main:d20260615")
    assert set(counter_keys) <= set(before)

    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "r2", counters, amounts(33, 100), now_ms=T_JUNE + 2)
    assert info.value.refusal == Refusal(
        scope="key",
        window="day",
        dimension="total_tokens",
        limit=100,
        used=14,
        reserved=0,
        requested=133,
        window_id="d20260615",
    )
    # The project counters (checked first, with room) were not touched either.
    assert await snapshot(redis, store.key_prefix) == before


async def test_refusal_details_and_body(
    make_store: StoreFactory, make_project: Callable[..., Project]
) -> None:
    store = make_store()
    project = make_project(
        {
            "project": {"day": {"output_tokens": 150}, "month": {"total_tokens": 10_000}},
        }
    )
    counters = project_counters(project, None, None)
    now = ms("2026-12-31T23:00:00")
    await store.reserve(project.id, "r1", counters, amounts(33, 100), now_ms=now)
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "r2", counters, amounts(33, 60), now_ms=now + 1)
    refusal = info.value.refusal
    assert refusal == Refusal("project", "day", "output_tokens", 150, 0, 100, 60, "d20261231")
    assert budget_exhausted_body(refusal) == {
        "error": "budget_exhausted",
        "reason": "daily output_tokens cap would be exceeded by this request",
        "scope": "project",
        "window": "day",
        "dimension": "output_tokens",
        "limit": 150,
        "used": 0,
        "reserved": 100,
        "requested": 60,
        "resets_at": "2027-01-01T00:00:00Z",
        "message": "daily output_tokens cap would be exceeded by this request: 50 of 150"
        " output tokens left, this request may use 60; the day window resets at"
        " 2027-01-01T00:00:00Z",
    }
    # With the request's output ceiling known, it says which max_tokens fits.
    assert budget_exhausted_body(refusal, max_tokens_fit=50)["max_tokens_fit"] == 50
    assert (
        "a request with max_tokens <= 50 fits now" in budget_exhausted_body(refusal, 50)["message"]
    )
    # Fill the day exactly (50 more fit: <= is allowed), then it is "reached".
    await store.reserve(project.id, "r3", counters, amounts(0, 50), now_ms=now + 2)
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "r4", counters, amounts(0, 1), now_ms=now + 3)
    assert info.value.refusal.reserved == 150
    assert budget_exhausted_body(info.value.refusal)["reason"] == "daily output_tokens cap reached"
    assert str(info.value) == "daily output_tokens cap reached"


async def test_refusal_month_window_and_per_user_wording(
    make_store: StoreFactory, make_project: Callable[..., Project]
) -> None:
    store = make_store()
    project = make_project({"per_user": {"month": {"input_tokens": 40}}})
    counters = project_counters(project, None, "alice")
    now = ms("2026-12-10T08:00:00")
    rsv = await store.reserve(project.id, "r1", counters, amounts(33, 100), now_ms=now)
    await store.settle(rsv, amounts(30, 5), now_ms=now + 1)
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "r2", counters, amounts(33, 100), now_ms=now + 2)
    refusal = info.value.refusal
    assert refusal == Refusal("user", "month", "input_tokens", 40, 30, 0, 33, "m202612")
    body = budget_exhausted_body(refusal)
    assert body["reason"] == "per-user monthly input_tokens cap would be exceeded by this request"
    assert body["resets_at"] == "2027-01-01T00:00:00Z"
    # Another end user has their own counter.
    other = project_counters(project, None, "bob")
    await store.reserve(project.id, "r3", other, amounts(33, 100), now_ms=now + 3)


async def test_lifetime_refusal_has_no_reset(
    make_store: StoreFactory, make_project: Callable[..., Project]
) -> None:
    store = make_store()
    project = make_project({"per_key": {"lifetime": {"total_tokens": 100}}})
    counters = project_counters(project, "key_main", None)
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "r1", counters, amounts(33, 100), now_ms=T_JUNE)
    refusal = info.value.refusal
    assert refusal == Refusal("key", "lifetime", "total_tokens", 100, 0, 0, 133, "all")
    assert budget_exhausted_body(refusal)["resets_at"] is None
    assert (
        budget_exhausted_body(refusal)["reason"]
        == "per-key lifetime total_tokens cap would be exceeded by this request"
    )


@pytest.mark.parametrize(
    ("window_id", "expected"),
    [
        ("d20261231", "2027-01-01T00:00:00Z"),
        ("m202612", "2027-01-01T00:00:00Z"),
        ("d20240228", "2024-02-29T00:00:00Z"),
        ("d20240229", "2024-03-01T00:00:00Z"),
        ("d20230228", "2023-03-01T00:00:00Z"),
        ("m202401", "2024-02-01T00:00:00Z"),
        ("m202611", "2026-12-01T00:00:00Z"),
        ("all", None),
    ],
)
def test_resets_at(window_id: str, expected: str | None) -> None:
    assert resets_at(window_id) == expected


@pytest.mark.parametrize(
    ("iso", "day", "month"),
    [
        ("1970-01-01T00:00:00", "d19700101", "m197001"),
        ("2000-02-29T23:59:59.999", "d20000229", "m200002"),
        ("2024-02-29T00:00:00", "d20240229", "m202402"),
        ("2024-03-01T00:00:00", "d20240301", "m202403"),
        ("2026-12-31T23:59:59.999", "d20261231", "m202612"),
        ("2027-01-01T00:00:00", "d20270101", "m202701"),
        ("2100-03-01T12:00:00", "d21000301", "m210003"),
    ],
)
async def test_window_ids_follow_the_utc_calendar(
    make_store: StoreFactory,
    make_project: Callable[..., Project],
    iso: str,
    day: str,
    month: str,
) -> None:
    store = make_store()
    project = make_project({})
    rsv = await store.reserve(
        project.id, "r1", project_counters(project, None, None), amounts(1, 1), now_ms=ms(iso)
    )
    assert rsv.counter_keys == keys_of(store, f"p:{day}", f"p:{month}", "p:all")
    # The Python mirror of the same calendar (usage reads, the harness) agrees.
    assert keys.window_ids(ms(iso) / 1000) == {"day": day, "month": month, "lifetime": "all"}


async def test_key_layout_mirrors_the_lua_scripts(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    """Every key the scripts write is one gateway.budget.keys names (usage reads, the
    metrics and the tests find counters, holds and markers by those names), and no other."""
    store = make_store(ttl_s=1)
    project = make_project(
        {"per_key": {"day": {"total_tokens": 10_000}}, "per_user": {"month": {"input_tokens": 99}}}
    )
    counters = project_counters(project, "key_main", "alice")
    assert [c.suffix for c in counters] == ["p"] * 3 + ["k:key_main", keys.user_part("alice")]
    # 200 tokens a minute: the 133 held keep the limit's key for 40 s of real time.
    tpm = RateLimit(keys.rate_limit_part(True, "key_main"), 200, True, "key")
    assert tpm.suffix == "rl:tpm:k:key_main"
    tag = keys.tag(store.key_prefix, project.id)
    assert tag == store.tag(project.id) == f"{store.key_prefix}:{{prj:prj_alpha}}:"
    ids = keys.window_ids(T_JUNE / 1000)

    crashed = await store.reserve(
        project.id, "crashed", counters, amounts(33, 100), T_JUNE, rate_limits=[tpm]
    )
    assert crashed.project_tag == tag
    assert crashed.counter_keys == tuple(
        keys.counter_key(tag, c.suffix, ids[c.window]) for c in counters
    )
    assert await redis.hkeys(tag + keys.RESERVATIONS) == [b"crashed"]
    assert await redis.zscore(tag + keys.RESERVATION_EXPIRIES, "crashed") == T_JUNE + 1000
    assert await redis.exists(tag + tpm.suffix) == 1
    # Past its expiry the next reserve charges it: a tombstone and a ledger event.
    nxt = await store.reserve(
        project.id, "next", counters, amounts(1, 1), T_JUNE + 1001, ledger_max_events=10
    )
    assert await redis.exists(keys.tombstone(tag, "crashed")) == 1
    assert await redis.xlen(tag + keys.LEDGER) == 1
    assert await store.settle(nxt, amounts(1, 1), now_ms=T_JUNE + 1002) is True
    assert await redis.exists(keys.settled_marker(tag, "next")) == 1
    assert await store.ping() is True

    written = {k.decode() async for k in redis.scan_iter(match=store.key_prefix + ":*")}
    assert written == {
        *crashed.counter_keys,
        tag + tpm.suffix,
        keys.tombstone(tag, "crashed"),
        tag + keys.LEDGER,
        keys.settled_marker(tag, "next"),
        keys.readiness_key(store.key_prefix),
    }
    # A refusal names the window by the same id, and resets when that window ends.
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "big", counters, amounts(99, 1), T_JUNE + 1003)
    assert info.value.refusal.window_id == ids["month"]
    assert info.value.refusal.resets_at == keys.resets_at(ids["month"]) == "2026-07-01T00:00:00Z"


# ----------------------------------------------------------------------------- windows


async def test_settle_after_midnight_charges_the_reservation_windows(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store()
    project = make_project({"project": {"day": {"total_tokens": 150}}})
    counters = project_counters(project, None, None)
    day_d = ms("2026-12-31T23:59:59.500")
    day_d1 = day_d + 1000  # 2027-01-01T00:00:00.500Z

    rsv = await store.reserve(project.id, "r1", counters, amounts(33, 100), now_ms=day_d)
    d_keys = keys_of(store, "p:d20261231", "p:m202612", "p:all")
    assert rsv.counter_keys == d_keys
    assert await store.settle(rsv, amounts(30, 90), now_ms=day_d1) is True
    cost = 30 * 150 + 90 * 600
    for key in d_keys:
        assert await counter(redis, key) == used(30, 90, cost)
    d1_keys = keys_of(store, "p:d20270101", "p:m202701")
    for key in d1_keys:
        assert await redis.exists(key) == 0

    # Day D is full (120 used + 133 > 150) ...
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "late", counters, amounts(33, 100), now_ms=day_d + 400)
    assert info.value.refusal == Refusal(
        "project", "day", "total_tokens", 150, 120, 0, 133, "d20261231"
    )
    # ... day D+1 starts empty: the same worst case fits, on fresh day and month counters.
    rsv2 = await store.reserve(project.id, "r2", counters, amounts(33, 100), now_ms=day_d1 + 1)
    assert rsv2.counter_keys == (*d1_keys, keys_of(store, "p:all")[0])
    for key in d1_keys:
        assert await counter(redis, key) == held(33, 100, 64_950)
    assert await counter(redis, keys_of(store, "p:all")[0]) == held(
        33, 100, 64_950, u=(30, 90, cost)
    )


# ----------------------------------------------------------------------------- expiry


async def test_expired_reservation_is_charged_by_the_next_reserve(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store(ttl_s=1)
    project = make_project({"project": {"month": {"total_tokens": 200}}})
    counters = project_counters(project, None, None)
    t0 = T_JUNE
    crashed = await store.reserve(project.id, "crashed", counters, amounts(33, 100), now_ms=t0)
    month = keys_of(store, "p:m202606")[0]
    assert await redis.zscore(crashed.project_tag + "rsvexp", "crashed") == t0 + 1000

    # 1 ms before its expiry the hold still counts.
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "next", counters, amounts(33, 100), now_ms=t0 + 999)
    assert info.value.refusal == Refusal(
        "project", "month", "total_tokens", 200, 0, 133, 133, "m202606"
    )
    assert await counter(redis, month) == held(33, 100, 64_950)

    # Once past its expiry, the next reserve charges it first, at its worst case (an
    # answer nobody recorded): the same room, now as used, not reserved.
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "next", counters, amounts(33, 100), now_ms=t0 + 1001)
    assert info.value.refusal == Refusal(
        "project", "month", "total_tokens", 200, 133, 0, 133, "m202606"
    )
    for key in crashed.counter_keys:
        assert await counter(redis, key) == used(33, 100, 64_950)
    assert await redis.exists(crashed.project_tag + "rsv", crashed.project_tag + "rsvexp") == 0
    # What is left fits.
    nxt = await store.reserve(project.id, "next", counters, amounts(33, 30), now_ms=t0 + 1002)
    assert await store.settle(nxt, amounts(11, 3), now_ms=t0 + 1003) is True
    for key in nxt.counter_keys:
        assert await counter(redis, key) == used(44, 103, 64_950 + 3_450)


async def test_late_settle_of_an_expired_hold_nobody_charged_yet_settles_it(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store(ttl_s=1)
    project = make_project({"project": {"month": {"total_tokens": 1000}}})
    counters = project_counters(project, None, None)
    t0 = T_JUNE
    rsv = await store.reserve(project.id, "slow", counters, amounts(33, 100), now_ms=t0)
    # Past its expiry, but no script charged it yet: its gateway was slow, not gone. The
    # settle finds it still held and charges the truth (no worst case, no expired event).
    assert await store.settle(rsv, amounts(20, 50), now_ms=t0 + 5000) is True
    for key in rsv.counter_keys:
        assert await counter(redis, key) == used(20, 50, 20 * 150 + 50 * 600)
    assert await redis.exists(rsv.project_tag + "rsv", rsv.project_tag + "rsvexp") == 0


async def test_late_settle_after_purge_does_not_release_twice(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store(ttl_s=1)
    project = make_project({"project": {"month": {"total_tokens": 1000}}})
    counters = project_counters(project, None, None)
    t0 = T_JUNE
    slow = await store.reserve(project.id, "slow", counters, amounts(33, 100), now_ms=t0)
    other = await store.reserve(project.id, "other", counters, amounts(40, 60), now_ms=t0 + 2000)
    # "slow" was charged at its worst case by that reserve; its late settle replaces that
    # charge by the truth and releases nothing.
    assert await store.settle(slow, amounts(20, 50), now_ms=t0 + 2001) is False
    cost_slow = 20 * 150 + 50 * 600
    for key in other.counter_keys:
        assert await counter(redis, key) == held(40, 60, 40 * 150 + 60 * 600, u=(20, 50, cost_slow))
    # Settling twice (a retry after an unanswered call) never releases or charges twice.
    assert await store.settle(other, amounts(1, 2), now_ms=t0 + 2002) is True
    assert await store.settle(other, amounts(1, 2), now_ms=t0 + 2003) is False
    for key in other.counter_keys:
        assert await counter(redis, key) == used(21, 52, cost_slow + 150 + 1200)


async def test_window_counters_expire_after_their_window_lifetime_ones_never(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    """Day counters live 40 days, month counters 400, set when the counter is made
    (capped or not); lifetime counters never expire. Later requests keep that expiry."""
    store = make_store()
    project = make_project(
        {"project": {"day": {"total_tokens": 10_000}}, "per_key": {"month": {"input_tokens": 500}}}
    )
    counters = project_counters(project, "key_main", None)
    day, month = 40 * 86400, 400 * 86400
    for rid in ("first", "second"):
        rsv = await store.reserve(project.id, rid, counters, amounts(33, 100))
        await store.settle(rsv, amounts(11, 3))
        # The project's three windows and the key's capped one: d<date>, m<month>, all.
        by_window: dict[str, list[int]] = {"d": [], "m": [], "a": []}
        for key in rsv.counter_keys:
            by_window[key.rsplit(":", 1)[1][0]].append(await redis.ttl(key))
        assert [len(by_window[w]) for w in "dma"] == [1, 2, 1], by_window
        assert by_window["a"] == [-1]  # lifetime: no expiry
        assert all(day - 60 <= ttl <= day for ttl in by_window["d"]), (rid, by_window)
        assert all(month - 60 <= ttl <= month for ttl in by_window["m"]), (rid, by_window)


async def test_settled_markers_live_past_the_hold_and_not_a_day(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    """Each settle (or release) leaves one marker key that makes its retries no-ops. It
    must outlive every retry, which stop once the hold would have expired, and not much
    longer: a day's markers of a busy gateway were millions of keys."""
    store = make_store(ttl_s=900)
    project = make_project({"project": {"month": {"total_tokens": 1000}}})
    counters = project_counters(project, None, None)
    settled = await store.reserve(project.id, "settled", counters, amounts(33, 100))
    released = await store.reserve(project.id, "released", counters, amounts(33, 100))
    assert await store.settle(settled, amounts(11, 3)) is True
    await store.release(released)
    for rid in ("settled", "released"):
        ttl = await redis.ttl(f"{settled.project_tag}done:{rid}")
        assert 900 < ttl <= 900 + 300, (rid, ttl)
    # Still a no-op when retried within that time.
    assert await store.settle(settled, amounts(11, 3)) is False
    for key in settled.counter_keys:
        assert await counter(redis, key) == used(11, 3, 3_450)


async def test_purging_a_hold_whose_counter_expired_recreates_no_key(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    """A crashed gateway's hold, purged after its day counter expired (40 days on), must
    not recreate that counter: it would hold negative reservations and never expire."""
    store = make_store()
    project = make_project({})
    counters = project_counters(project, None, None)
    crashed = await store.reserve(project.id, "crashed", counters, amounts(33, 100), now_ms=T_JUNE)
    day, month, lifetime = crashed.counter_keys
    await redis.delete(day)  # its 40-day expiry fired
    later = T_JUNE + 41 * 86_400_000
    await store.reserve(project.id, "next", counters, amounts(1, 1), now_ms=later)
    assert await redis.exists(day) == 0
    # The counters that still exist charged exactly the crashed hold (at its worst case).
    assert await counter(redis, month) == used(33, 100, 64_950)
    assert await counter(redis, lifetime) == held(1, 1, 750, u=(33, 100, 64_950))


@pytest.mark.parametrize(
    "bad",
    [Amounts(2**63, 5, 0), Amounts(10**18, 5, 0), Amounts(5, 2, -1)],
    ids=["int64-overflow", "past-1e18", "negative-cost"],
)
async def test_settle_refuses_amounts_it_cannot_hold_and_writes_nothing(
    bad: Amounts, make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    """Redis keeps a failed script's earlier writes: a count HINCRBY refuses must fail the
    settle before it marks it settled or releases the hold, so a retry still bills."""
    store = make_store()
    project = make_project({"project": {"month": {"total_tokens": 1000}}})
    counters = project_counters(project, None, None)
    rsv = await store.reserve(project.id, "r1", counters, amounts(33, 100), now_ms=T_JUNE)
    before = await snapshot(redis, store.key_prefix)
    with pytest.raises(StoreUnavailable):
        await store.settle(rsv, bad, now_ms=T_JUNE + 1)
    assert await snapshot(redis, store.key_prefix) == before
    assert await store.settle(rsv, amounts(11, 3), now_ms=T_JUNE + 2) is True
    for key in rsv.counter_keys:
        assert await counter(redis, key) == used(11, 3, 3_450)


# ----------------------------------------------------------------------------- rate limits


async def test_releasing_a_reservation_never_held_refunds_no_rate_limit(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    """A reserve that timed out is released once the store answers; if it never ran (or
    was refused) it charged no token rate limit, so its release must give none back."""
    store = make_store()
    project = make_project({})
    counters = project_counters(project, None, None)
    tpm = RateLimit("rl:tpm", 1000, True, "project")
    tat_key = store.tag(project.id) + "rl:tpm"
    t0_us = T_JUNE * 1000
    await store.reserve(project.id, "a", counters, amounts(400, 500), T_JUNE, rate_limits=[tpm])
    assert await get_int(redis, tat_key) == t0_us + 900 * 60_000
    with pytest.raises(RateLimitExceeded):
        await store.reserve(project.id, "b", counters, amounts(400, 500), T_JUNE, rate_limits=[tpm])
    never_held = Reservation("b", store.tag(project.id), (), amounts(400, 500), (tpm,))
    await store.release(never_held, refund_rate_limits=True)
    assert await get_int(redis, tat_key) == t0_us + 900 * 60_000
    with pytest.raises(RateLimitExceeded):
        await store.reserve(
            project.id, "c", counters, amounts(400, 500), T_JUNE + 1, rate_limits=[tpm]
        )
    # A held reservation still gets back what it did not use.
    now = T_JUNE + 60_000
    rsv = await store.reserve(project.id, "d", counters, amounts(400, 500), now, rate_limits=[tpm])
    assert await store.settle(rsv, amounts(10, 10), now_ms=now + 1) is True
    assert await get_int(redis, tat_key) == now * 1000 + 20 * 60_000


async def test_a_request_over_a_tokens_per_minute_limit_by_itself_is_told_so(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    """Waiting cannot admit a request whose worst case exceeds the per-minute limit:
    it is refused without a retry time, and charges nothing."""
    store = make_store()
    project = make_project({})
    counters = project_counters(project, None, None)
    tpm = RateLimit("rl:tpm", 1000, True, "project")
    with pytest.raises(RateLimitExceeded) as info:
        await store.reserve(project.id, "r1", counters, amounts(33, 4096), rate_limits=[tpm])
    assert (info.value.limit, info.value.retry_after_ms, info.value.requested) == (tpm, None, 4129)
    assert await snapshot(redis, store.key_prefix) == {}
    # Exactly the limit fits.
    await store.reserve(project.id, "r2", counters, amounts(400, 600), rate_limits=[tpm])


@pytest.mark.parametrize("per_minute", [150_000_000, 40_000_000])
async def test_large_tokens_per_minute_limits_are_exact(
    per_minute: int, make_store: StoreFactory, make_project: Callable[..., Project]
) -> None:
    """60e6 / limit microseconds per token is fractional for most limits: rounded up to
    whole microseconds it capped every limit at 60M a minute and cut 40M to 30M."""
    store = make_store()
    project = make_project({})
    counters = project_counters(project, None, None)
    tpm = RateLimit("rl:tpm", per_minute, True, "project")
    million = amounts(500_000, 500_000)
    for i in range(per_minute // 1_000_000):  # a full minute's worth in one instant
        await store.reserve(project.id, f"r{i}", counters, million, T_JUNE, rate_limits=[tpm])
    with pytest.raises(RateLimitExceeded):
        await store.reserve(project.id, "over", counters, million, T_JUNE, rate_limits=[tpm])


@pytest.mark.parametrize(
    ("limit", "each"),
    [
        (RateLimit("rl:rpm", 7, False, "project"), amounts(1, 1)),
        (RateLimit("rl:tpm", 7_000_000, True, "project"), amounts(500_000, 500_000)),
    ],
    ids=["requests", "tokens"],
)
async def test_limits_that_do_not_divide_a_minute_are_off_by_microseconds_only(
    limit: RateLimit,
    each: Amounts,
    make_store: StoreFactory,
    make_project: Callable[..., Project],
) -> None:
    """7 a minute: 8,571,428.57 us each. Stored arrival times are whole microseconds
    rounded up (never admitting more), so the 7th of a burst waits 3 us, not seconds."""
    store = make_store()
    project = make_project({})
    counters = project_counters(project, None, None)
    for i in range(6):
        await store.reserve(project.id, f"r{i}", counters, each, T_JUNE, rate_limits=[limit])
    with pytest.raises(RateLimitExceeded) as info:
        await store.reserve(project.id, "r6", counters, each, T_JUNE, rate_limits=[limit])
    assert info.value.retry_after_ms == 1
    await store.reserve(project.id, "r6", counters, each, T_JUNE + 1, rate_limits=[limit])
    with pytest.raises(RateLimitExceeded) as info:
        await store.reserve(project.id, "r7", counters, each, T_JUNE + 1, rate_limits=[limit])
    assert info.value.retry_after_ms == 8_571


# ----------------------------------------------------------------------------- cost


def test_cost_nano_exact_integer_math_rounded_up() -> None:
    assert MINI_CONFIG.input == 150_000_000
    assert MINI_CONFIG.output == 600_000_000
    assert MINI_CONFIG.cached_input == 75_000_000
    assert cost_nano(Usage(1, 0), MINI_CONFIG) == 150
    assert cost_nano(Usage(0, 1), MINI_CONFIG) == 600
    assert cost_nano(Usage(1_000_000, 1_000_000), MINI_CONFIG) == 750_000_000
    # Cached input at its own price; cached beyond the input is clamped to the input.
    assert (
        cost_nano(Usage(30, 57, cached_input_tokens=16), MINI_CONFIG)
        == 14 * 150 + 16 * 75 + 57 * 600
    )
    assert cost_nano(Usage(3, 0, cached_input_tokens=9), MINI_CONFIG) == 3 * 75
    # Fractional nano-USD are rounded up, once, on the whole amount.
    # USD strings, parsed to nano-USD by the model's validator (the fields are ints).
    odd = PriceConfig.model_validate(
        {"input": "0.123456789", "output": "1.000000001", "cached_input": "0.000000001"}
    )
    assert (odd.input, odd.output, odd.cached_input) == (123_456_789, 1_000_000_001, 1)
    assert cost_nano(Usage(1, 0), odd) == 124  # 123.456789
    assert cost_nano(Usage(0, 1), odd) == 1001  # 1000.000001
    assert cost_nano(Usage(3, 2), odd) == 2371  # 2370.370369
    assert cost_nano(Usage(10, 0, cached_input_tokens=4), odd) == 741  # 740.740738
    assert cost_nano(Usage(1_000_000, 0), odd) == 123_456_789  # exact: no rounding
    tiny = PriceConfig.model_validate({"input": "0.000001", "output": "0.000001"})  # 1000 per Mtok
    assert cost_nano(Usage(1, 0), tiny) == 1
    assert cost_nano(Usage(1000, 0), tiny) == 1
    assert cost_nano(Usage(1001, 0), tiny) == 2
    assert cost_nano(Usage(0, 0), tiny) == 0
    assert cost_nano(Usage(5, 5), None) == 0


async def test_cost_cap_in_nano_usd(
    make_store: StoreFactory, make_project: Callable[..., Project], redis: Redis
) -> None:
    store = make_store()
    project = make_project({"project": {"month": {"cost_usd": "0.00005"}}})  # 50_000 nano
    assert [(c.dimension, c.limit) for c in project.caps] == [("cost_usd", 50_000)]
    counters = project_counters(project, None, None)
    assert counters[1].caps == "3=50000"

    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "big", counters, amounts(33, 100), now_ms=T_JUNE)
    assert info.value.refusal == Refusal(
        "project", "month", "cost_usd", 50_000, 0, 0, 64_950, "m202606"
    )
    assert budget_exhausted_body(info.value.refusal)["reason"] == (
        "monthly cost_usd cap would be exceeded by this request"
    )

    first = await store.reserve(project.id, "a", counters, amounts(33, 50), now_ms=T_JUNE)
    assert first.amounts.cost_nano == 34_950
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "b", counters, Amounts(0, 0, 15_051), now_ms=T_JUNE)
    assert info.value.refusal.reserved == 34_950
    assert info.value.refusal.requested == 15_051
    # Exactly up to the cap is allowed.
    await store.reserve(project.id, "c", counters, Amounts(0, 0, 15_050), now_ms=T_JUNE)
    month = keys_of(store, "p:m202606")[0]
    assert (await counter(redis, month))["r3"] == 50_000
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve(project.id, "d", counters, Amounts(0, 0, 1), now_ms=T_JUNE)
    assert budget_exhausted_body(info.value.refusal)["reason"] == "monthly cost_usd cap reached"

    # Settling with the true (smaller) cost frees the difference.
    assert await store.settle(first, amounts(11, 3), now_ms=T_JUNE + 1) is True
    assert await counter(redis, month) == {
        "u0": 11, "u1": 3, "u2": 14, "u3": 3_450, "r0": 0, "r1": 0, "r2": 0, "r3": 15_050,
    }  # fmt: skip
    await store.reserve(
        project.id, "e", counters, Amounts(0, 0, 50_000 - 3_450 - 15_050), now_ms=T_JUNE + 2
    )


# ----------------------------------------------------------------------------- faults


async def _assert_unavailable_fast(store: BudgetStore, project: Project, budget_s: float) -> None:
    counters = project_counters(project, None, None)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.reserve(project.id, "r1", counters, amounts(1, 1))
    assert time.monotonic() - started < budget_s
    fake = Reservation(
        "r1", store.tag(project.id), (store.tag(project.id) + "p:all",), amounts(1, 1)
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.settle(fake, amounts(1, 1))
    assert time.monotonic() - started < budget_s
    started = time.monotonic()
    assert await store.ping() is False
    assert time.monotonic() - started < budget_s


@pytest.mark.serial
async def test_store_unavailable_when_nothing_listens(
    make_store: StoreFactory, make_project: Callable[..., Project]
) -> None:
    store = make_store(url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    await _assert_unavailable_fast(store, make_project({}), budget_s=1.0)


@pytest.mark.serial
async def test_store_unavailable_when_the_server_never_answers(
    make_store: StoreFactory, make_project: Callable[..., Project]
) -> None:
    writers: list[asyncio.StreamWriter] = []
    received: list[bytes] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while data := await reader.read(65536):
            received.append(data)  # swallow everything, answer nothing

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        store = make_store(url=f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        await _assert_unavailable_fast(store, make_project({}), budget_s=1.0)
        assert writers, "the client never connected to the silent server"
        assert received, "the client never sent a command"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
