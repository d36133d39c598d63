"""Per process, for the auth path: API-managed keys by prefix, and last-used times.

A key read from Redis is kept ``TTL_S`` (1 s, counted from the read), an unknown prefix
too. Every change is published by the writer (gateway.control.store) and each process
listens: a changed key is dropped from its cache at once, so a revocation takes effect
everywhere within milliseconds; the TTL bounds it to a second when a message is lost
(the listener reconnecting; the cache is cleared when it has). Concurrent lookups of one
prefix share one read. A read that began before an invalidation is not cached.

Last-used times: a request notes its key (a dict lookup); at most once a minute per
key and process the time is written, by a background flush, never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.control.records import ApiKey
from gateway.control.store import KeyStore, KeyStoreUnavailable

log = logging.getLogger("gateway.control")

TTL_S = 1.0
MAX_ENTRIES = 10_000
TOUCH_EVERY_S = 60.0
FLUSH_EVERY_S = 2.0
_RETRY_S = (0.05, 0.2, 0.5, 1.0)  # the listener's reconnect backoff


class ApiKeyCache:
    """API-managed keys by public prefix, for this process."""

    def __init__(self, store: KeyStore, ttl_s: float = TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._loading: dict[str, asyncio.Task[ApiKey | None]] = {}
        self._epoch = 0  # bumped by each invalidation
        self.listening = False  # the invalidation channel is subscribed

    async def get(self, prefix: str) -> ApiKey | None:
        """The key with this prefix (None: no such key); KeyStoreUnavailable if it is
        not cached and Redis does not answer."""
        entry = self._entries.get(prefix)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        task = self._loading.get(prefix)
        if task is None:
            task = asyncio.ensure_future(self._load(prefix))
            self._loading[prefix] = task
            task.add_done_callback(lambda t: self._loaded(prefix, t))
        # Shielded: a caller that goes away (its client did) leaves the read to the others.
        return await asyncio.shield(task)

    async def _load(self, prefix: str) -> ApiKey | None:
        started, epoch = time.monotonic(), self._epoch
        stored = await self.store.get(prefix)
        key = None if stored is None else stored.key
        if epoch == self._epoch:  # no change was announced while this read ran
            if len(self._entries) >= MAX_ENTRIES:
                self._prune()
            self._entries[prefix] = (started + self.ttl_s, key)
        return key

    def _loaded(self, prefix: str, task: asyncio.Task[ApiKey | None]) -> None:
        if self._loading.get(prefix) is task:
            del self._loading[prefix]
        if not task.cancelled():
            task.exception()  # retrieved: each waiter has it; none left is no warning

    def _prune(self) -> None:
        now = time.monotonic()
        self._entries = {p: e for p, e in self._entries.items() if e[0] > now}
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()

    def invalidate(self, prefix: str) -> None:
        self._epoch += 1
        self._entries.pop(prefix, None)
        self._loading.pop(prefix, None)  # new lookups read again

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._loading.clear()

    async def listen(self) -> None:
        """Drop each prefix announced on the channel, for ever (reconnecting with a
        backoff; the cache is cleared on each reconnect, as messages may be lost)."""
        failures = 0
        while True:
            pubsub: Any = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.channel)
                self.clear()
                self.listening = True
                if failures:
                    log.info("api key invalidations: listening again")
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self.invalidate(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:  # any failure: reconnect, never stop listening
                self.listening = False
                self.clear()
                if failures == 0:
                    log.warning(
                        "api key invalidations: channel lost, keys are re-read each second",
                        extra={"error_type": type(exc).__name__},
                    )
                await asyncio.sleep(_RETRY_S[min(failures, len(_RETRY_S) - 1)])
                failures += 1
            finally:
                self.listening = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


class LastUsed:
    """When each key was last used, written at most once a minute per key."""

    def __init__(self, store: KeyStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._noted: dict[str, float] = {}  # key id -> when last queued (this process)
        self._pending: dict[str, int] = {}

    def touch(self, key_id: str) -> None:
        now = self.clock()
        if now - self._noted.get(key_id, 0.0) >= TOUCH_EVERY_S:
            self._noted[key_id] = now
            self._pending[key_id] = int(now)

    async def flush(self) -> None:
        if not self._pending:
            return
        times, self._pending = self._pending, {}
        try:
            await self.store.touch(times)
        except KeyStoreUnavailable:
            for key_id in times:  # noted again on its next use
                self._noted.pop(key_id, None)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()
