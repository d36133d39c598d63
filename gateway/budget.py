"""Budgets in Redis: reserve the worst case before forwarding, settle the truth after.

One Lua script reserves on every applicable counter (project, API key, end user;
day, month, lifetime windows) atomically on Redis time, all or nothing; a second
replaces the reservation with the usage the provider reported. Both first charge
expired reservations (a crashed gateway's) at their worst case, with a ledger event
each, a bounded batch per call; a third (``drain``) charges all of them before usage
is read. All keys of a project share the hash tag ``{prj:<id>}``: one slot per script.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from gateway.autopipeline import AutoPipeline
from gateway.config import DIMENSIONS, WINDOWS, Cap, Project

log = logging.getLogger("gateway.budget")

_DIM_INDEX = {name: i for i, name in enumerate(DIMENSIONS)}
_WINDOW_WORD = {"day": "daily", "month": "monthly", "lifetime": "lifetime"}


def _script(name: str) -> str:
    lua = resources.files("gateway") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / name).read_text()


RESERVE_LUA = _script("reserve.lua")
SETTLE_LUA = _script("settle.lua")
EXTEND_LUA = _script("extend.lua")
DRAIN_LUA = _script("drain.lua")
# How much longer than a hold a settled marker lives (see BudgetStore.settle).
SETTLED_MARKER_MARGIN_S = 300


RedisLike = Redis | RedisCluster


def _pack_command(name: bytes, sha: bytes, keys: list[str], args: list[str]) -> bytes:
    """RESP encoding of ``name sha numkeys *keys *args``."""
    parts = [name, sha, str(len(keys)).encode()]
    parts += [k.encode() for k in keys]
    parts += [a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(
        [b"$%d\r\n%s\r\n" % (len(part), part) for part in parts]
    )


class StoreUnavailable(Exception):
    """The budget store did not answer in time or refused the connection.

    ``maybe_held``: a reserve call that timed out may still have run; this is the
    reservation it would have made, to release once the store answers again.
    """

    maybe_held: Reservation | None = None


@dataclass(frozen=True, slots=True)
class Amounts:
    input_tokens: int
    output_tokens: int
    cost_nano: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def encode(self) -> str:
        return f"{self.input_tokens},{self.output_tokens},{self.total_tokens},{self.cost_nano}"

    def get(self, dimension: str) -> int:
        return (self.input_tokens, self.output_tokens, self.total_tokens, self.cost_nano)[
            _DIM_INDEX[dimension]
        ]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: the first counter without room."""

    scope: str  # "project" | "key" | "user"
    window: str
    dimension: str
    limit: int
    used: int
    reserved: int
    requested: int
    window_id: str

    @property
    def room(self) -> int:
        """What the cap has left: neither used nor held by requests in flight."""
        return max(self.limit - self.used - self.reserved, 0)

    def body(self, max_tokens_fit: int | None = None) -> dict[str, Any]:
        """The documented 402 body, with a ``message`` that says what the caller can do
        (``max_tokens_fit``: the largest max_tokens that fits now, see fitting_output)."""
        scope_word = {"project": "", "key": "per-key ", "user": "per-user ", "org": "org "}[
            self.scope
        ]
        verb = (
            "reached"
            if self.used + self.reserved >= self.limit
            else "would be exceeded by this request"
        )
        reason = f"{scope_word}{_WINDOW_WORD[self.window]} {self.dimension} cap {verb}"
        resets = resets_at(self.window_id)
        body: dict[str, Any] = {
            "error": "budget_exhausted",
            "reason": reason,
            "message": self._message(reason, max_tokens_fit, resets),
            "scope": self.scope,
            "window": self.window,
            "dimension": self.dimension,
            "limit": self.limit,
            "used": self.used,
            "reserved": self.reserved,
            "requested": self.requested,
            "resets_at": resets,
        }
        if max_tokens_fit is not None:
            body["max_tokens_fit"] = max_tokens_fit
        return body

    def _message(self, reason: str, max_tokens_fit: int | None, resets: str | None) -> str:
        if self.dimension == "cost_usd":
            left = f"${_usd(self.room)} of ${_usd(self.limit)} left"
            need = f"this request may cost up to ${_usd(self.requested)}"
        else:
            left = f"{self.room} of {self.limit} {self.dimension.replace('_', ' ')} left"
            need = f"this request may use {self.requested}"
        text = f"{reason}: {left}, {need}"
        if max_tokens_fit is not None:
            text += f"; a request with max_tokens <= {max_tokens_fit} fits now"
        if resets is not None:
            text += f"; the {self.window} window resets at {resets}"
        elif max_tokens_fit is None:
            text += "; a lifetime cap does not reset: ask the operator to raise it"
        return text


def _usd(nano: int) -> str:
    """Nano-USD as dollars, with as many decimals as it needs (at least two)."""
    text = f"{nano / 1e9:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def fitting_output(refusal: Refusal, output_ceiling: int, output_price: int | None) -> int | None:
    """The largest max_tokens with which the refused request fits now (None: none does).

    Lowering max_tokens by one lowers the worst case by one token on the output and
    total dimensions, and by the output price on cost; input caps are not helped by it.
    ``output_price``: nano-USD per million output tokens."""
    over = refusal.requested - refusal.room
    if refusal.dimension in ("output_tokens", "total_tokens"):
        cut = over
    elif refusal.dimension == "cost_usd" and output_price:
        cut = -(-over * 1_000_000 // output_price)
    else:
        return None
    fits = output_ceiling - cut
    return fits if fits >= 1 else None


def resets_at(window_id: str) -> str | None:
    """When the window named by a reserve script's window id ends (ISO 8601, UTC)."""
    if window_id.startswith("d"):
        start = datetime.strptime(window_id[1:], "%Y%m%d").replace(tzinfo=UTC)
        end = datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    elif window_id.startswith("m"):
        year, month = int(window_id[1:5]), int(window_id[5:7])
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    else:
        return None
    return end.strftime("%Y-%m-%dT%H:%M:%SZ")


class BudgetExceeded(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.body()["reason"])
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A per-minute limit (GCRA): ``per_token`` limits cost the request's tokens."""

    suffix: str  # "rl:rpm", "rl:tpm:k:<key id>", ...
    per_minute: int
    per_token: bool
    scope: str  # "project" | "key"

    @property
    def us_per_unit(self) -> float:
        """Microseconds per unit, with its fraction (whole ones distorted large limits:
        40M tokens a minute at 2 us each admitted 30M). Passed to Lua as repr(), which
        reads back the same double."""
        return 60_000_000 / self.per_minute

    def units(self, amounts: Amounts) -> int:
        return amounts.total_tokens if self.per_token else 1


class RateLimitExceeded(Exception):
    """No room in a rate limit: retry after ``retry_after_ms``; None when the request
    alone (``requested`` units) exceeds the per-minute limit, so waiting cannot help."""

    def __init__(self, limit: RateLimit, retry_after_ms: int | None, requested: int) -> None:
        super().__init__(f"{limit.suffix} rate limit")
        self.limit = limit
        self.retry_after_ms = retry_after_ms
        self.requested = requested


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    project_tag: str
    counter_keys: tuple[str, ...]
    amounts: Amounts
    rate_limits: tuple[RateLimit, ...] = ()


@dataclass(frozen=True, slots=True)
class Counter:
    """One (scope, window) counter a request touches, with its caps pre-encoded."""

    scope: str  # "project" | "key" | "user"
    suffix: str  # "p", "k:<key id>", "u:<digest>"
    window: str
    caps: str  # "dim=limit,..." or "-"


def _caps_arg(caps: Sequence[Cap]) -> str:
    return ",".join(f"{_DIM_INDEX[c.dimension]}={c.limit}" for c in caps) or "-"


@functools.lru_cache(maxsize=4096)
def _window_caps(caps: tuple[Cap, ...], scope: str) -> tuple[tuple[str, str], ...]:
    """(window, encoded caps) of one scope, for the windows where it has caps; the
    project scope lists every window (its usage is always tracked). Cached: the same
    few cap sets serve every request of a project."""
    out = []
    for window in WINDOWS:
        in_window = [c for c in caps if c.scope == scope and c.window == window]
        if in_window or scope == "project":
            out.append((window, _caps_arg(in_window)))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _key_counters(caps: tuple[Cap, ...], key_id: str | None) -> tuple[Counter, ...]:
    """The project's and the key's counters: the same for every request of that key,
    so built once (key ids come from the config; the cache is bounded all the same)."""
    counters = [Counter("project", "p", w, c) for w, c in _window_caps(caps, "project")]
    if key_id is not None:
        counters += (Counter("key", "k:" + key_id, w, c) for w, c in _window_caps(caps, "key"))
    return tuple(counters)


def project_counters(project: Project, key_id: str | None, user: str | None) -> list[Counter]:
    """Counters a request touches: the project's in every window (usage is always
    tracked), the key's and the end user's only in windows where they have caps."""
    counters = list(_key_counters(project.caps, key_id))
    if user is not None:
        user_caps = _window_caps(project.caps, "user")
        if user_caps:
            # End-user ids come from clients: hash them into a bounded, safe key part.
            part = "u:" + hashlib.sha256(user.encode()).hexdigest()[:24]
            counters += (Counter("user", part, w, c) for w, c in user_caps)
    return counters


def org_counters(caps: Sequence[Cap]) -> list[Counter]:
    """An org's counters, in the windows where it has caps (none: no org step at all)."""
    return [
        Counter("org", "o", window, _caps_arg([c for c in caps if c.window == window]))
        for window in WINDOWS
        if any(c.window == window for c in caps)
    ]


def project_rate_limits(project: Project, key_id: str | None) -> list[RateLimit]:
    limits = project.file.rate_limits
    out: list[RateLimit] = []
    if limits.requests_per_minute:
        out.append(RateLimit("rl:rpm", limits.requests_per_minute, False, "project"))
    if limits.tokens_per_minute:
        out.append(RateLimit("rl:tpm", limits.tokens_per_minute, True, "project"))
    if key_id is not None:
        per_key = limits.per_key
        if per_key.requests_per_minute:
            out.append(RateLimit(f"rl:rpm:k:{key_id}", per_key.requests_per_minute, False, "key"))
        if per_key.tokens_per_minute:
            out.append(RateLimit(f"rl:tpm:k:{key_id}", per_key.tokens_per_minute, True, "key"))
    return out


class BudgetStore:
    """Reserve and settle against Redis with tight timeouts; typed results."""

    def __init__(
        self, redis: RedisLike, key_prefix: str, timeout_s: float, reservation_ttl_s: int
    ) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self._timeout_s = timeout_s
        # How long a hold lasts unless settled or renewed (a reload may change it).
        self.reservation_ttl_s = reservation_ttl_s
        self._reserve = redis.register_script(RESERVE_LUA)
        self._settle = redis.register_script(SETTLE_LUA)
        self._extend = redis.register_script(EXTEND_LUA)
        self._drain = redis.register_script(DRAIN_LUA)
        # Callers give up after timeout_s; a batch nobody answers frees its connection
        # a little later (a slow reply past a caller's deadline is still read and dropped).
        self._pipeline = (
            AutoPipeline(redis, reply_timeout=max(3 * timeout_s, 1.0), call_timeout=timeout_s)
            if isinstance(redis, Redis)
            else None
        )

    @property
    def timeout_s(self) -> float:
        """How long a call may wait for the store before it counts as unavailable."""
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._timeout_s = value
        if self._pipeline is not None:  # it enforces the deadline of pipelined calls
            self._pipeline.call_timeout = value

    def _tag(self, owner_id: str, kind: str = "prj") -> str:
        return f"{self.key_prefix}:{{{kind}:{owner_id}}}:"

    def tag(self, owner_id: str, kind: str = "prj") -> str:
        """The key prefix, hash tag included, of a project's (or an org's) keys."""
        return self._tag(owner_id, kind)

    async def prepare(self) -> None:
        """Before serving: learn a cluster's slot map and load the scripts, so the first
        burst of requests does not race to do it (best effort: failing here is not
        fatal, the store reconnects and reloads on demand)."""
        try:
            async with asyncio.timeout(max(self.timeout_s, 5.0)):
                if isinstance(self.redis, RedisCluster):
                    await self.redis.initialize()
                # On a cluster, SCRIPT LOAD goes to every primary.
                await self.redis.script_load(RESERVE_LUA)
                await self.redis.script_load(SETTLE_LUA)
                await self.redis.script_load(EXTEND_LUA)
                await self.redis.script_load(DRAIN_LUA)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("budget store not ready at start", extra={"error_type": type(exc).__name__})

    async def _call(self, script: Any, keys: list[str], args: list[str]) -> Any:
        try:
            if self._pipeline is not None:
                return await self._evalsha(script, keys, args)  # the pipeline times it out
            async with asyncio.timeout(self.timeout_s):
                return await script(keys=keys, args=args)  # a cluster: routed by slot
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        except (AttributeError, ValueError, IndexError) as exc:
            # redis-py internals failing mid-reconnect (seen with cluster clients):
            # still the store failing, so fail closed (503), not 500.
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _evalsha(self, script: Any, keys: list[str], args: list[str]) -> Any:
        """EVALSHA with the command packed here and pipelined with other requests'
        (see autopipeline): the hot path, twice per request; redis-py's generic command
        path costs several times more client CPU than the round trip itself. NOSCRIPT
        (a restarted or flushed Redis) loads the script and retries once."""
        assert self._pipeline is not None
        packed = _pack_command(b"EVALSHA", script.sha.encode(), keys, args)
        try:
            return await self._pipeline.submit(packed)
        except NoScriptError:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.script_load(script.script)
            return await self._pipeline.submit(packed)

    async def reserve(
        self,
        project_id: str,
        reservation_id: str,
        counters: list[Counter],
        amounts: Amounts,
        now_ms: int | None = None,
        *,
        rate_limits: Sequence[RateLimit] = (),
        kind: str = "prj",
        event: dict[str, Any] | None = None,
        ledger_max_events: int = 0,
    ) -> Reservation:
        """Hold ``amounts`` on every counter and rate limit, or hold nothing and raise
        BudgetExceeded (402) or RateLimitExceeded (429). ``kind`` "org" reserves on an
        org's counters (its own hash tag).

        ``event``: what the ledger event says if this hold expires unsettled (request id,
        project...); it and every expired hold this call charges go to the tag's ledger
        (bounded by ``ledger_max_events``, 0: none)."""
        for limit in rate_limits:
            # Over the limit by itself: refused for good, without asking Redis.
            if limit.units(amounts) > limit.per_minute:
                raise RateLimitExceeded(limit, None, limit.units(amounts))
        tag = self._tag(project_id, kind)
        args = [
            tag,
            reservation_id,
            str(self.reservation_ttl_s * 1000),
            "" if now_ms is None else str(now_ms),
            amounts.encode(),
            ";".join(f"{c.suffix} {c.window} {c.caps}" for c in counters),
            ";".join(f"{r.suffix} {r.us_per_unit} {r.units(amounts)}" for r in rate_limits),
            self._expiry_arg(ledger_max_events, event),
        ]
        script_keys = [tag + "rsv", tag + "rsvexp", f"{tag}done:{reservation_id}", tag + "ledger"]
        try:
            result = await self._call(self._reserve, script_keys, args)
            if int(result[0]) == 0 and int(result[7]) > 0:
                # Refused while expired holds beyond the script's batch were left: the
                # decision stands (charged or not, they weigh the same), but the body's
                # used/reserved split would count them as reserved. Charge them all, ask again.
                await self.drain(tag, ledger_max_events, now_ms)
                result = await self._call(self._reserve, script_keys, args)
        except StoreUnavailable as exc:
            exc.maybe_held = Reservation(reservation_id, tag, (), amounts, tuple(rate_limits))
            raise
        status = int(result[0])
        if status == 1:
            keys = tuple(k.decode() if isinstance(k, bytes) else k for k in result[2:])
            return Reservation(reservation_id, tag, keys, amounts, tuple(rate_limits))
        if status == 2:
            limit = rate_limits[int(result[1]) - 1]
            raise RateLimitExceeded(limit, int(result[2]), limit.units(amounts))
        if status == 3:
            raise StoreUnavailable("reservation given up")
        counter = counters[int(result[1]) - 1]
        dimension = DIMENSIONS[int(result[2])]
        window_id = result[6].decode() if isinstance(result[6], bytes) else result[6]
        raise BudgetExceeded(
            Refusal(
                scope=counter.scope,
                window=counter.window,
                dimension=dimension,
                limit=int(result[3]),
                used=int(result[4]),
                reserved=int(result[5]),
                requested=amounts.get(dimension),
                window_id=window_id,
            )
        )

    async def settle(
        self,
        reservation: Reservation,
        actual: Amounts,
        now_ms: int | None = None,
        *,
        ledger: dict[str, Any] | None = None,
        ledger_max_events: int = 0,
        refund_rate_limits: bool = True,
    ) -> bool:
        """Replace the hold with ``actual``; False if it was no longer held (it expired and
        was charged at its worst case: ``actual`` replaces that charge; or it was never made).

        Exactly once per reservation: a retry after an unanswered call changes nothing.
        ``ledger_max_events`` also bounds the events of the expired holds this call charges.
        """
        tag = reservation.project_tag
        keys = [
            tag + "rsv",
            tag + "rsvexp",
            f"{tag}done:{reservation.id}",
            tag + "ledger",
            f"{tag}xh:{reservation.id}",
            *reservation.counter_keys,
        ]
        # Token rate limits were charged the worst case: give back the difference (the
        # script does only if the hold was still held: one never made charged nothing).
        refunds = ";".join(
            f"{tag}{limit.suffix} {max((limit.units(reservation.amounts) - limit.units(actual)) * limit.us_per_unit, 0)}"
            for limit in reservation.rate_limits
            if limit.per_token and refund_rate_limits
        )
        event = orjson.dumps(ledger).decode() if ledger and ledger_max_events > 0 else ""
        args = [
            reservation.id,
            actual.encode(),
            "" if now_ms is None else str(now_ms),
            refunds,
            str(ledger_max_events if event else 0),
            event,
            # The settled marker (one small key per request) lives past every retry of
            # this settle, which stop once the hold would have expired, and no longer:
            # at a day, a busy gateway kept millions of them in Redis.
            str(self._marker_lifetime_s),
            str(ledger_max_events),
        ]
        return int(await self._call(self._settle, keys, args)) == 1

    async def release(
        self,
        reservation: Reservation,
        refund_rate_limits: bool = False,
        *,
        ledger_max_events: int = 0,
    ) -> None:
        """Undo a reservation that will not be used (a later step was refused, or the
        request moved to another reservation, which keeps the rate-limit charge)."""
        await self.settle(
            reservation,
            Amounts(0, 0, 0),
            refund_rate_limits=refund_rate_limits,
            ledger_max_events=ledger_max_events,
        )

    async def drain(self, tag: str, ledger_max_events: int, now_ms: int | None = None) -> None:
        """Charge every expired hold under ``tag`` (a project's or an org's key prefix) at
        its worst case, a bounded batch per script call, until none is left: after this,
        what the counters hold as reserved is live holds only."""
        keys = [tag + "rsv", tag + "rsvexp", tag + "ledger"]
        args = ["" if now_ms is None else str(now_ms), self._expiry_arg(ledger_max_events)]
        while int(await self._call(self._drain, keys, args)) > 0:
            pass

    @property
    def _marker_lifetime_s(self) -> int:
        """How long a settled marker (and an expired hold's tombstone) lives: past every
        retry of a settle, which stop once the hold would have expired."""
        return self.reservation_ttl_s + SETTLED_MARKER_MARGIN_S

    def _expiry_arg(self, ledger_max_events: int, event: dict[str, Any] | None = None) -> str:
        """The scripts' "<max events> <tombstone lifetime> <event>" argument."""
        head = f"{ledger_max_events} {self._marker_lifetime_s}"
        # orjson escapes newlines inside strings: the record's "\n" separator stays unique.
        return f"{head} {orjson.dumps(event).decode()}" if event else head

    async def extend(self, reservation: Reservation, now_ms: int | None = None) -> bool:
        """Hold ``reservation`` for another full ttl from now (before a retry or a
        fallback); False if it is no longer held (it expired and was released)."""
        tag = reservation.project_tag
        ttl_ms = str(self.reservation_ttl_s * 1000)
        args = [reservation.id, ttl_ms, "" if now_ms is None else str(now_ms)]
        return int(await self._call(self._extend, [tag + "rsv", tag + "rsvexp"], args)) == 1

    async def ping(self) -> bool:
        """Whether the store answers and accepts writes: a read-only replica (after a
        failover) or a full disk answers PING, yet refuses every reservation."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(await self.redis.set(f"{self.key_prefix}:readyz", "1", px=10_000))
        except (TimeoutError, RedisError, OSError):
            return False
