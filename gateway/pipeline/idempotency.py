"""Idempotency keys: a client's retry of a spending POST is answered once.

``Idempotency-Key: <key>`` claims the key (per project and credential) in Redis before
the budget hold, with the body's fingerprint:

- another request with the key is in flight: 409 if it has the same body, 422 if not;
- the request with the key completed a unary answer: that answer is replayed from
  Redis (``Idempotent-Replayed: true``), without the upstream and without a bill; with
  another body, 422;
- it completed a stream: 409 (streams are not stored, so not replayed: a client that
  read it to the end has it; one that did not gets a new key's answer);
- it failed, or a stream was cut before its end: the key is released, so the retry
  runs (and is billed) like a new request.

The claim lives ``limits.reservation_ttl_seconds`` while in flight (a gateway that
died releases it with its hold) and ``limits.idempotency_ttl_seconds`` once completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gateway.budget import keys
from gateway.context import PRINCIPAL, REQUEST_ID, REQUEST_STATE, CallContext
from gateway.errors import Conflict, ServiceUnavailable, ValidationFailed

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII, as Stripe's and the IETF draft's keys (UUIDs, ULIDs, hashes).
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Deletes the claim only if it is still this request's (not a later claimant's).
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def idempotency_key(request: web.Request) -> str | None:
    """The request's key, None without one; 422 for one that is no printable token."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise ValidationFailed(
            f"{HEADER} must be 1 to 255 printable ASCII characters, no spaces", HEADER
        )
    return key


class Idempotency:
    """``async with Idempotency(request, call, key) as claim``: ``claim.replay`` is the
    stored answer to return (nothing else runs); else the request runs and
    ``claim.completed(response)`` stores a unary answer before it is returned."""

    def __init__(self, request: web.Request, call: CallContext, key: str) -> None:
        state = request[REQUEST_STATE]
        principal = request[PRINCIPAL]
        self.state = state
        self.call = call
        self.request = request
        # Per project and credential: another key's (or a session's user's) identical
        # key is another request.
        credential = f"{principal.key_id or ''}\x00{principal.user or ''}"
        digest = hashlib.sha256(f"{credential}\x00{key}".encode()).hexdigest()
        self.redis_key = keys.idempotency_record(state.store.tag(call.project.id), digest)
        self.request_id = request[REQUEST_ID]
        self.fingerprint = ""
        self.claim = b""
        self.replay: web.Response | None = None
        self.stored = False

    async def __aenter__(self) -> Idempotency:
        self.fingerprint = hashlib.sha256(await self.request.read()).hexdigest()
        self.claim = orjson.dumps(
            {"state": "pending", "fp": self.fingerprint, "request_id": self.request_id}
        )
        limits = self.call.config.gateway.limits
        redis = self.state.store.redis
        try:
            async with asyncio.timeout(self.state.store.timeout_s):
                replay = await self._claim(redis, limits.reservation_ttl_seconds)
        except (RedisError, OSError, TimeoutError):
            raise ServiceUnavailable.detail(
                "idempotency store unavailable", {"Retry-After": "1"}
            ) from None
        self.replay = replay
        return self

    async def _claim(self, redis: Any, ttl: int) -> web.Response | None:
        """Claim the key (None), or the answer a record of another request gives."""
        for _ in range(3):  # a record that expires between SET NX and GET: claim again
            if await redis.set(self.redis_key, self.claim, nx=True, ex=ttl):
                return None
            found = await redis.get(self.redis_key)
            if found is not None:
                return self._answer(orjson.loads(found))
        raise TimeoutError("the idempotency record kept expiring")

    def _answer(self, record: dict[str, object]) -> web.Response:
        """What a request finding another's record gets."""
        if record.get("fp") != self.fingerprint:
            raise ValidationFailed(
                f"this {HEADER} was used with another request body; use a new key",
                HEADER,
            )
        if record.get("state") == "pending":
            raise Conflict.detail(
                f"a request with this {HEADER} is in flight; retry when it has finished"
            )
        if record.get("state") == "stream":
            raise Conflict.detail(
                f"the stream answered to this {HEADER} completed; streams are not replayed"
            )
        body = record.get("body")
        status = record.get("status")
        response = web.Response(
            body=body.encode() if isinstance(body, str) else b"",
            status=status if isinstance(status, int) else 200,
            content_type="application/json",
        )
        response.headers[REPLAYED_HEADER] = "true"
        original = record.get("request_id")
        if isinstance(original, str):
            response.headers["X-Original-Request-Id"] = original
        return response

    async def completed(self, response: web.StreamResponse) -> None:
        """Store the answer (unary: replayed later; a stream read to its end: 409)."""
        if response.status != 200:
            return
        limits = self.call.config.gateway.limits
        if isinstance(response, web.Response) and not self.call.chat.stream:
            body = response.body
            text = body.decode() if isinstance(body, bytes) else ""
            record = {"state": "done", "status": 200, "body": text}
        elif self.call.stream_outcome == "completed":
            record = {"state": "stream"}
        else:
            return  # cut before its end: released on exit
        record.update(fp=self.fingerprint, request_id=self.request_id)
        try:
            async with asyncio.timeout(self.state.store.timeout_s):
                await self.state.store.redis.set(
                    self.redis_key, orjson.dumps(record), ex=limits.idempotency_ttl_seconds
                )
        except (RedisError, OSError, TimeoutError):
            return  # released on exit (or by its ttl); the answer still goes out
        self.stored = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.replay is not None or self.stored:
            return
        # Failed, cut or refused: the key is free again (only if still ours). Shielded:
        # a client gone (the handler cancelled) must not keep its key claimed.
        await asyncio.shield(self._release())

    async def _release(self) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # else: its ttl
            async with asyncio.timeout(self.state.store.timeout_s):
                await self.state.store.redis.eval(_RELEASE, 1, self.redis_key, self.claim)
