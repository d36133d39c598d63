"""The budget store: reserve the worst case before forwarding, settle the truth after.

One Lua script reserves on every applicable counter (project, API key, end user;
day, month, lifetime windows) atomically on Redis time, all or nothing; a second
replaces the reservation with the usage the provider reported. Both first charge
expired reservations (a crashed gateway's) at their worst case, with a ledger event
each, a bounded batch per call; a third (``drain``) charges all of them before usage
is read. All keys of a project share one hash tag (see ``keys``): one slot per script.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

import gateway.budget.keys as keys
import gateway.budget.scripts as scripts
from gateway.autopipeline import AutoPipeline, pack_command
from gateway.budget.caps import Amounts, Counter, RateLimit
from gateway.budget.refusal import BudgetExceeded, RateLimitExceeded, Refusal
from gateway.config import DIMENSIONS

log = logging.getLogger("gateway.budget")

# How much longer than a hold a settled marker lives (see BudgetStore.settle).
SETTLED_MARKER_MARGIN_S = 300


RedisLike = Redis | RedisCluster


class StoreUnavailable(Exception):
    """The budget store did not answer in time or refused the connection.

    ``maybe_held``: a reserve call that timed out may still have run; this is the
    reservation it would have made, to release once the store answers again.
    """

    maybe_held: Reservation | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    project_tag: str
    counter_keys: tuple[str, ...]
    amounts: Amounts
    rate_limits: tuple[RateLimit, ...] = ()
    room: Room | None = None  # what was left once this was held (None: not known)


@dataclass(frozen=True, slots=True)
class Shrink:
    """Shrink instead of refuse: when the worst case does not fit, hold the output every
    cap has room for (in whole choices), if that is at least ``min_output`` a choice.
    The cost of ``output`` tokens is ``ceil((input_cost + output * output_price) / 1e6)``
    nano-USD, as gateway.usage.worst_cost_nano counts it."""

    min_output: int
    choices: int
    input_cost: int  # input bound x dearest input price (nano-USD per million tokens)
    output_price: int  # nano-USD per million output tokens

    def encode(self) -> str:
        return f"{self.min_output} {self.choices} {self.input_cost} {self.output_price}"


@dataclass(frozen=True, slots=True)
class CapRoom:
    """One cap's room once a request's worst case is held."""

    left: int
    limit: int
    window_id: str


@dataclass(frozen=True, slots=True)
class Room:
    """What the reserve script saw left: the token cap and the cost cap with the least
    room (None: no such cap), and per rate limit the units left and the milliseconds
    until it is full again."""

    tokens: CapRoom | None
    cost: CapRoom | None
    rates: tuple[tuple[int, int], ...]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_room(tightest: Any, rates: Any) -> Room:
    """The admitted reserve script's room fields (see reserve.lua's Returns)."""
    caps: list[CapRoom | None] = []
    for part in (p.strip() for p in _text(tightest).split("|")):
        if part == "-" or not part:
            caps.append(None)
            continue
        left, limit, window_id = part.split(" ")
        caps.append(CapRoom(int(left), int(limit), window_id))
    while len(caps) < 2:
        caps.append(None)
    parsed = []
    for spec in _text(rates).split(";"):
        if spec:
            left, reset_ms = spec.split(" ")
            parsed.append((int(left), int(reset_ms)))
    return Room(caps[0], caps[1], tuple(parsed))


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
        self._reserve = redis.register_script(scripts.RESERVE_LUA)
        self._settle = redis.register_script(scripts.SETTLE_LUA)
        self._extend = redis.register_script(scripts.EXTEND_LUA)
        self._drain = redis.register_script(scripts.DRAIN_LUA)
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

    def tag(self, owner_id: str, kind: str = keys.PROJECT) -> str:
        """The key prefix, hash tag included, of a project's (kind "org": an org's) keys."""
        return keys.tag(self.key_prefix, owner_id, kind)

    async def prepare(self) -> None:
        """Before serving: learn a cluster's slot map and load the scripts, so the first
        burst of requests does not race to do it (best effort: failing here is not
        fatal, the store reconnects and reloads on demand)."""
        try:
            async with asyncio.timeout(max(self.timeout_s, 5.0)):
                if isinstance(self.redis, RedisCluster):
                    await self.redis.initialize()
                # On a cluster, SCRIPT LOAD goes to every primary.
                for script in scripts.ALL:
                    await self.redis.script_load(script)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("budget store not ready at start", extra={"error_type": type(exc).__name__})

    async def _call(self, script: Any, key_names: list[str], args: list[str]) -> Any:
        try:
            if self._pipeline is not None:
                return await self._evalsha(script, key_names, args)  # the pipeline times it out
            async with asyncio.timeout(self.timeout_s):
                return await script(keys=key_names, args=args)  # a cluster: routed by slot
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        except (AttributeError, ValueError, IndexError) as exc:
            # redis-py internals failing mid-reconnect (seen with cluster clients):
            # still the store failing, so fail closed (503), not 500.
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _evalsha(self, script: Any, key_names: list[str], args: list[str]) -> Any:
        """EVALSHA with the command packed here and pipelined with other requests'
        (see autopipeline): the hot path, twice per request; redis-py's generic command
        path costs several times more client CPU than the round trip itself. NOSCRIPT
        (a restarted or flushed Redis) loads the script and retries once."""
        assert self._pipeline is not None
        packed = pack_command(b"EVALSHA", script.sha.encode(), key_names, args)
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
        kind: str = keys.PROJECT,
        event: dict[str, Any] | None = None,
        ledger_max_events: int = 0,
        shrink: Shrink | None = None,
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
        tag = self.tag(project_id, kind)
        args = [
            tag,
            reservation_id,
            str(self.reservation_ttl_s * 1000),
            "" if now_ms is None else str(now_ms),
            amounts.encode(),
            ";".join(f"{c.suffix} {c.window} {c.caps}" for c in counters),
            ";".join(f"{r.suffix} {r.us_per_unit} {r.units(amounts)}" for r in rate_limits),
            self._expiry_arg(ledger_max_events, event),
            shrink.encode() if shrink is not None else "",
        ]
        script_keys = [
            tag + keys.RESERVATIONS,
            tag + keys.RESERVATION_EXPIRIES,
            keys.settled_marker(tag, reservation_id),
            tag + keys.LEDGER,
        ]
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
            held = tuple(_text(k) for k in result[5:])
            room = parse_room(result[2], result[3])
            shrunk = _text(result[4])
            if shrunk != "-":  # what the script held instead of the worst case
                i, o, _total, c = (int(v) for v in shrunk.split(","))
                amounts = Amounts(i, o, c)
            return Reservation(reservation_id, tag, held, amounts, tuple(rate_limits), room)
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
        script_keys = [
            tag + keys.RESERVATIONS,
            tag + keys.RESERVATION_EXPIRIES,
            keys.settled_marker(tag, reservation.id),
            tag + keys.LEDGER,
            keys.tombstone(tag, reservation.id),
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
        return int(await self._call(self._settle, script_keys, args)) == 1

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
        script_keys = [tag + keys.RESERVATIONS, tag + keys.RESERVATION_EXPIRIES, tag + keys.LEDGER]
        args = ["" if now_ms is None else str(now_ms), self._expiry_arg(ledger_max_events)]
        while int(await self._call(self._drain, script_keys, args)) > 0:
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
        script_keys = [tag + keys.RESERVATIONS, tag + keys.RESERVATION_EXPIRIES]
        return int(await self._call(self._extend, script_keys, args)) == 1

    async def ping(self) -> bool:
        """Whether the store answers and accepts writes: a read-only replica (after a
        failover) or a full disk answers PING, yet refuses every reservation."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(
                    await self.redis.set(keys.readiness_key(self.key_prefix), "1", px=10_000)
                )
        except (TimeoutError, RedisError, OSError):
            return False
