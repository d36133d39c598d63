"""The control plane's Redis layout, and its one write: a checked, atomic, idempotent
change of some key records (a Lua script).

Every key shares the hash tag ``{ctl}`` (one cluster slot, so one script may touch
them all), under the gateway's ``redis.key_prefix``:

    <p>:{ctl}:key:<key id>     an API-managed key (JSON: gateway.control.records)
    <p>:{ctl}:org:<org>        the org's key ids (zset, by creation time)
    <p>:{ctl}:used:<key id>    when the key was last used (unix seconds; YAML keys too)
    <p>:{ctl}:idem:<digest>    a mutating call's answer under its Idempotency-Key
    <p>:ctl:keys               the channel a changed key's prefix is published on

A revoked or expired key's record stays listable for ``KEEP_ENDED_S``, then expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from gateway.budget import RedisLike
from gateway.control.records import ApiKey, key_id_for

log = logging.getLogger("gateway.control")

KEEP_ENDED_S = 30 * 86_400
LAST_USED_TTL_S = 400 * 86_400

# KEYS[1] the idempotency record, KEYS[2] the org's index, KEYS[3..] key records.
# ARGV[1] the idempotency record to store ('' for none), ARGV[2] its ttl (s), ARGV[3] the
# channel; then 6 per record: the JSON expected there now ('' = none may be), the new
# JSON, its expiry (unix ms, '0' = none), its index score ('' = not indexed), its id,
# the message to publish ('' = none). Answers {'ok'}, {'replay', stored answer}, or
# {'conflict', i} (a record changed since it was read: read again and retry).
APPLY_LUA = """
if ARGV[1] ~= '' then
  local found = redis.call('GET', KEYS[1])
  if found then return {'replay', found} end
end
local n = #KEYS - 2
for i = 1, n do
  local base = 3 + (i - 1) * 6
  local current = redis.call('GET', KEYS[2 + i])
  local expected = ARGV[base + 1]
  if expected == '' then
    if current then return {'conflict', tostring(i)} end
  elseif current ~= expected then
    return {'conflict', tostring(i)}
  end
end
for i = 1, n do
  local base = 3 + (i - 1) * 6
  local key = KEYS[2 + i]
  redis.call('SET', key, ARGV[base + 2])
  if ARGV[base + 3] ~= '0' then redis.call('PEXPIREAT', key, ARGV[base + 3]) end
  if ARGV[base + 4] ~= '' then redis.call('ZADD', KEYS[2], ARGV[base + 4], ARGV[base + 5]) end
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
for i = 1, n do
  local message = ARGV[3 + (i - 1) * 6 + 6]
  if message ~= '' then redis.call('PUBLISH', ARGV[3], message) end
end
return {'ok'}
"""


class KeyStoreUnavailable(Exception):
    """Redis did not answer in time, or refused."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as read, with its exact bytes (what a change must still find there)."""

    key: ApiKey
    raw: bytes


@dataclass(frozen=True, slots=True)
class Write:
    """One record to write: ``expected`` is the record's bytes when it was read (None:
    it must not exist yet); ``index`` adds it to its org's list (a new key)."""

    key: ApiKey
    expected: bytes | None
    index: bool = False
    publish: bool = True  # tell every process its prefix changed


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: str  # "ok", "replay", "conflict"
    replay: bytes | None = None


class KeyStore:
    """The API-managed keys in Redis; every call bounded by ``timeout_s()``."""

    def __init__(self, redis: RedisLike, key_prefix: str, timeout_s: Callable[[], float]) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self.tag = f"{key_prefix}:{{ctl}}:"
        self.channel = f"{key_prefix}:ctl:keys"
        self._apply = redis.register_script(APPLY_LUA)

    def record_key(self, key_id: str) -> str:
        return f"{self.tag}key:{key_id}"

    def org_index(self, org: str) -> str:
        return f"{self.tag}org:{org}"

    def used_key(self, key_id: str) -> str:
        return f"{self.tag}used:{key_id}"

    def idem_key(self, digest: str) -> str:
        return f"{self.tag}idem:{digest}"

    async def get(self, prefix: str) -> Stored | None:
        """The key with this public prefix, if stored (a record that does not parse is
        no key)."""
        raw = await self._call(self.redis.get(self.record_key(key_id_for(prefix))))
        return _parse(raw)

    async def org_keys(self, org: str) -> list[Stored]:
        """The org's keys, oldest first (ids whose record expired are dropped)."""
        ids = [i.decode() for i in await self._call(self.redis.zrange(self.org_index(org), 0, -1))]
        if not ids:
            return []
        raws = await self._call(self.redis.mget([self.record_key(i) for i in ids]))
        out: list[Stored] = []
        gone: list[str] = []
        for key_id, raw in zip(ids, raws, strict=True):
            stored = _parse(raw)
            if stored is None or stored.key.org != org:
                gone.append(key_id)
            else:
                out.append(stored)
        if gone:
            await self._call(self.redis.zrem(self.org_index(org), *gone))
        return out

    async def org_size(self, org: str) -> int:
        return int(await self._call(self.redis.zcard(self.org_index(org))))

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, int]:
        if not key_ids:
            return {}
        raws = await self._call(self.redis.mget([self.used_key(i) for i in key_ids]))
        return {k: int(v) for k, v in zip(key_ids, raws, strict=True) if v is not None}

    async def touch(self, times: dict[str, int]) -> None:
        """Record when keys were last used (one round trip for all of them)."""
        pipe = self.redis.pipeline(transaction=False)
        for key_id, at in times.items():
            pipe.set(self.used_key(key_id), at, ex=LAST_USED_TTL_S)
        await self._call(pipe.execute())

    async def answer(self, digest: str) -> bytes | None:
        """The stored answer of a mutating call under an Idempotency-Key, if any."""
        raw = await self._call(self.redis.get(self.idem_key(digest)))
        return None if raw is None else bytes(raw)

    async def apply(
        self, org: str, writes: Sequence[Write], idem: tuple[str, bytes, int] | None
    ) -> Applied:
        """Write ``writes`` at once if each record is still as read, with the answer to
        replay (``idem``: digest, answer, ttl seconds), unless one is stored already."""
        keys = [self.idem_key(idem[0] if idem else "-"), self.org_index(org)]
        args: list[str | bytes | int] = [idem[1] if idem else "", idem[2] if idem else 0]
        args.append(self.channel)
        for w in writes:
            keys.append(self.record_key(w.key.id))
            ends = w.key.ends_at()
            expiry = 0 if ends is None else (ends + KEEP_ENDED_S) * 1000
            args += [
                w.expected or "",
                w.key.to_json(),
                expiry,
                w.key.created_at if w.index else "",
                w.key.id,
                w.key.prefix if w.publish else "",
            ]
        result = await self._call(self._apply(keys=keys, args=args))
        outcome = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
        if outcome == "replay":
            return Applied("replay", bytes(result[1]))
        return Applied(outcome)

    async def publish(self, message: str) -> None:
        await self._call(self.redis.publish(self.channel, message))

    async def _call(self, awaitable: Any) -> Any:
        """``awaitable`` (a redis-py call) within the timeout; KeyStoreUnavailable if
        Redis does not answer in time or refuses."""
        try:
            async with asyncio.timeout(self.timeout_s()):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise KeyStoreUnavailable(type(exc).__name__) from None


def _parse(raw: bytes | None) -> Stored | None:
    if raw is None:
        return None
    try:
        return Stored(ApiKey.from_json(raw), bytes(raw))
    except ValueError:
        log.warning("an API key record does not parse: ignored")
        return None
