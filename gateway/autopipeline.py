"""Automatic pipelining of the budget scripts' EVALSHA calls.

Calls issued in the same event-loop turn (concurrent requests) leave in one write
on one pooled connection, and their replies are read back in order: one syscall
each way and one pool checkout per batch instead of per call, on both sides of
the socket. A lone call goes out on the next loop turn, so nothing waits for
company. Replies are matched by order, which Redis guarantees per connection.

Each call also has a deadline, ``call_timeout``: past it, its future fails with
TimeoutError while the batch may still be read. One sweeper timer per pipeline
enforces every deadline (calls are queued in submit order, so their deadlines are
too), instead of a timer armed and cancelled around each call; a call fails at
most a quarter of its timeout late.

A batch that gets no answer within ``reply_timeout`` is abandoned: its connection is
closed (a late reply must never reach the next batch) and its callers fail. The
client has no socket timeout of its own (see gateway.serve.resources.redis_client),
so this is what frees a connection to a server that stopped answering without closing
it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


def pack_command(name: bytes, sha: bytes, keys: list[str], args: list[str]) -> bytes:
    """RESP encoding of ``name sha numkeys *keys *args`` (what ``submit`` takes)."""
    parts = [name, sha, str(len(keys)).encode()]
    parts += [k.encode() for k in keys]
    parts += [a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(
        [b"$%d\r\n%s\r\n" % (len(part), part) for part in parts]
    )


class AutoPipeline:
    def __init__(
        self,
        redis: Redis,
        max_batch: int = 128,
        reply_timeout: float = 10.0,
        call_timeout: float | None = None,
    ) -> None:
        self.pool = redis.connection_pool
        self.max_batch = max_batch
        self.reply_timeout = reply_timeout
        self.call_timeout = reply_timeout if call_timeout is None else call_timeout
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._deadlines: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweeper_loop: asyncio.AbstractEventLoop | None = None

    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply, its error, or
        TimeoutError once ``call_timeout`` has passed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._sweeper_loop is not loop:
            # A new event loop (tests run several): the old one's calls are not ours to fail.
            self._deadlines.clear()
            self._sweeper_loop, self._sweeper = loop, None
        self._pending.append((packed, future))
        self._deadlines.append((loop.time() + self.call_timeout, future))
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.call_timeout / 4, self._sweep)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(TimeoutError("no reply from the store in time"))
        self._sweeper = loop.call_later(self.call_timeout / 4, self._sweep) if deadlines else None

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_batch):
            task = asyncio.get_running_loop().create_task(
                self._send(pending[start : start + self.max_batch])
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        conn = None
        try:
            # The checkout is inside the deadline too: a new connection's handshake
            # waits on the server like any reply.
            async with asyncio.timeout(self.reply_timeout):
                conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
                await conn.send_packed_command(b"".join(p for p, _ in batch), check_health=False)
                for _, future in batch:
                    try:
                        reply = await conn.read_response()
                    except ResponseError as exc:  # this command's error reply; the rest go on
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    if not future.done():  # its caller may have timed out already
                        future.set_result(reply)
        except BaseException as exc:
            # redis-py closed the connection (on any error, a timeout's cancellation
            # included): whatever was not answered fails now.
            _fail(batch, exc if isinstance(exc, Exception) else RedisConnectionError("cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            if conn is not None:
                await self.pool.release(conn)


def _fail(batch: list[tuple[bytes, asyncio.Future[Any]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
