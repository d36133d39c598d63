"""Remaining-budget headers, pure: what a caller may still spend, on every answer of a
spending route, so SDK users read it with ``with_raw_response``.

From the reserve script's view once the request's worst case was held (so never more
than is left): the token cap and the cost cap with the least room (project, key, user
and org caps alike), with their limits and when their windows reset; and OpenAI-style
``x-ratelimit-*`` headers for the gateway's own per-minute limits (the tightest of the
project's and the key's of each kind).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from aiohttp import web

from gateway.budget import RateLimit
from gateway.budget.keys import resets_at
from gateway.budget.store import CapRoom, Room

HEADERS = web.RequestKey("budget_headers", dict)


def _tightest(rooms: Iterable[CapRoom | None]) -> CapRoom | None:
    found = [r for r in rooms if r is not None]
    return min(found, key=lambda r: r.left) if found else None


def _usd(nano: int) -> str:
    """Nano-USD as dollars, rounded down (a caller is never told more than is left)."""
    return f"{max(nano, 0) // 1000 / 1_000_000:.6f}"


def _duration(ms: int) -> str:
    """OpenAI's reset format: "1s", "6m0s", "250ms"."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = math.ceil(ms / 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def budget_headers(rooms: Sequence[Room], rate_limits: Sequence[RateLimit]) -> dict[str, str]:
    """The headers for the rooms of a request's holds (project step, org step) and the
    rate limits its project step was charged (in the order the script got them)."""
    out: dict[str, str] = {}
    tokens = _tightest(r.tokens for r in rooms)
    if tokens is not None:
        out["X-Budget-Remaining-Tokens"] = str(max(tokens.left, 0))
        out["X-Budget-Limit-Tokens"] = str(tokens.limit)
        reset = resets_at(tokens.window_id)
        if reset is not None:
            out["X-Budget-Reset-Tokens"] = reset
    cost = _tightest(r.cost for r in rooms)
    if cost is not None:
        out["X-Budget-Remaining-USD"] = _usd(cost.left)
        out["X-Budget-Limit-USD"] = _usd(cost.limit)
        reset = resets_at(cost.window_id)
        if reset is not None:
            out["X-Budget-Reset-USD"] = reset
    rates = rooms[0].rates if rooms else ()
    kinds: dict[str, tuple[int, int, int]] = {}  # kind -> (left, limit, reset ms)
    for limit, (left, reset_ms) in zip(rate_limits, rates, strict=False):
        kind = "tokens" if limit.per_token else "requests"
        if kind not in kinds or left < kinds[kind][0]:
            kinds[kind] = (left, limit.per_minute, reset_ms)
    for kind, (left, per_minute, reset_ms) in kinds.items():
        out[f"x-ratelimit-limit-{kind}"] = str(per_minute)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(left, 0))
        out[f"x-ratelimit-reset-{kind}"] = _duration(reset_ms)
    return out


async def add_budget_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers the hold left on the request, if any."""
    headers = request.get(HEADERS)
    if headers:
        response.headers.update(headers)
