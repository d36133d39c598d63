"""Reading usage: per window and dimension, used, reserved in flight, cap, reset time.

Served at ``GET /v1/projects/{ref}/usage`` (a credential with ``read`` scope) and by
``gateway usage --project SLUG``. First every expired hold of the tags read is charged
(``BudgetStore.drain``: usually one script call each, more only after a crash left more
than a batch), so "reserved" is live holds only; then one Redis round trip for the
clock, one pipeline for the counters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from gateway.budget import BudgetStore, StoreUnavailable, keys
from gateway.config import DIMENSIONS, WINDOWS, Cap, Config, Project, org_caps
from gateway.context import PRINCIPAL, PROJECT, REQUEST_STATE, GatewayState
from gateway.errors import ServiceUnavailable


@dataclass(frozen=True, slots=True)
class _Row:
    """One counter of the report: whose it is, where it lives, its caps."""

    scope: str
    who: str | None  # the key id, user or org; None for the project
    tag: str
    part: str  # counter part (gateway.budget.keys)
    window: str
    caps: list[Cap]


async def usage_report(
    store: BudgetStore,
    config: Config,
    project: Project,
    key_id: str | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """Counters of the project (every window), the key and user (capped windows), the org."""
    rows: list[_Row] = []
    ptag = store.tag(project.id)
    for window in WINDOWS:
        caps = [c for c in project.caps if c.scope == "project" and c.window == window]
        rows.append(_Row("project", None, ptag, keys.PROJECT_COUNTER, window, caps))
    scoped: list[tuple[str, str, str]] = []  # scope, who, counter part
    if key_id is not None:
        scoped.append(("key", key_id, keys.key_part(key_id)))
    if user is not None:
        scoped.append(("user", user, keys.user_part(user)))
    for scope, who, part in scoped:
        for window in WINDOWS:
            caps = [c for c in project.caps if c.scope == scope and c.window == window]
            if caps:
                rows.append(_Row(scope, who, ptag, part, window, caps))
    org = config.gateway.orgs.get(project.org)
    if org is not None:
        caps_all = org_caps(org)
        otag = store.tag(project.org, keys.ORG)
        for window in WINDOWS:
            caps = [c for c in caps_all if c.window == window]
            if caps:
                rows.append(_Row("org", project.org, otag, keys.ORG_COUNTER, window, caps))
    try:
        await _drain(store, {row.tag for row in rows}, config.gateway.ledger.max_events)
        async with asyncio.timeout(store.timeout_s * 3):
            seconds, _micros = await store.redis.time()
            ids = keys.window_ids(float(seconds))
            pipe = store.redis.pipeline(transaction=False)
            for row in rows:
                pipe.hgetall(keys.counter_key(row.tag, row.part, ids[row.window]))
            results = await pipe.execute()
    except (TimeoutError, RedisError, OSError) as exc:
        raise StoreUnavailable(type(exc).__name__) from exc
    counters = []
    for row, state in zip(rows, results, strict=True):
        values = {k.decode(): int(v) for k, v in state.items()}
        limits = {c.dimension: c.limit for c in row.caps}
        dims = {}
        for i, dim in enumerate(DIMENSIONS):
            name = "cost_nano_usd" if dim == "cost_usd" else dim
            dims[name] = {
                "used": values.get(f"u{i}", 0),
                "reserved": max(values.get(f"r{i}", 0), 0),
                "cap": limits.get(dim),
            }
        entry: dict[str, Any] = {
            "scope": row.scope,
            "window": row.window,
            "window_id": ids[row.window],
            "resets_at": keys.resets_at(ids[row.window]),
            "dimensions": dims,
        }
        if row.who is not None:
            entry["id" if row.scope != "user" else "user"] = row.who
        counters.append(entry)
    return {
        "project": project.slug,
        "project_id": project.id,
        "org": project.org,
        "counters": counters,
    }


async def _drain(store: BudgetStore, tags: set[str], ledger_max_events: int) -> None:
    """Charge the expired holds of every tag (concurrently: one round trip when none is
    left over), so the counters hold live reservations only."""
    await asyncio.gather(*(store.drain(tag, ledger_max_events) for tag in sorted(tags)))


async def get_usage(request: web.Request) -> web.Response:
    state = request[REQUEST_STATE]
    principal = request[PRINCIPAL]
    try:
        report = await usage_report(
            state.store, state.config, request[PROJECT], principal.key_id, principal.user
        )
    except StoreUnavailable:
        state.metrics.store_errors.labels("usage").inc()
        raise ServiceUnavailable.detail("budget store unavailable", {"Retry-After": "1"}) from None
    return web.json_response(report)


async def refresh_budget_gauges(state: GatewayState) -> None:
    """Set the budget gauges from Redis (project counters, current windows): called by
    /metrics so the values are fresh at scrape time. Two round trips for all projects."""
    store, metrics = state.store, state.metrics
    projects = list(state.config.projects.values())
    try:
        tags = {store.tag(project.id) for project in projects}
        await _drain(store, tags, state.config.gateway.ledger.max_events)
        async with asyncio.timeout(store.timeout_s * 3):
            seconds, _micros = await store.redis.time()
            ids = keys.window_ids(float(seconds))
            pipe = store.redis.pipeline(transaction=False)
            for project in projects:
                for window in WINDOWS:
                    key = keys.counter_key(store.tag(project.id), keys.PROJECT_COUNTER, ids[window])
                    pipe.hgetall(key)
            results = iter(await pipe.execute())
    except (TimeoutError, RedisError, OSError, StoreUnavailable):
        metrics.store_errors.labels("metrics").inc()
        return
    token_dims = (
        ("input", 0, "input_tokens"),
        ("output", 1, "output_tokens"),
        ("total", 2, "total_tokens"),
    )
    # Rebuilt from the current config each time: a cap or a project a reload removed
    # must not stay exported (alerts on used / limit would go on firing).
    for gauge in (
        metrics.budget_used_tokens,
        metrics.budget_limit_tokens,
        metrics.budget_used_usd,
        metrics.budget_limit_usd,
        metrics.budget_reserved_tokens,
    ):
        gauge.clear()
    for project in projects:
        caps: dict[tuple[str, str], int] = {
            (c.window, c.dimension): c.limit for c in project.caps if c.scope == "project"
        }
        for window in WINDOWS:
            values = {k.decode(): int(v) for k, v in next(results).items()}
            for kind, i, dim in token_dims:
                metrics.budget_used_tokens.labels(project.slug, window, kind).set(
                    values.get(f"u{i}", 0)
                )
                if (window, dim) in caps:
                    metrics.budget_limit_tokens.labels(project.slug, window, kind).set(
                        caps[(window, dim)]
                    )
            metrics.budget_used_usd.labels(project.slug, window).set(values.get("u3", 0) / 1e9)
            if (window, "cost_usd") in caps:
                metrics.budget_limit_usd.labels(project.slug, window).set(
                    caps[(window, "cost_usd")] / 1e9
                )
            metrics.budget_reserved_tokens.labels(project.slug, window).set(
                max(values.get("r2", 0), 0)
            )
