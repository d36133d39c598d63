"""Automatic pipelining of the budget scripts' EVALSHA calls.

Calls issued in the same event-loop turn (concurrent requests) leave in one write
on one pooled connection, and their replies are read back in order: one syscall
each way and one pool checkout per batch instead of per call, on both sides of
the socket. A lone call goes out on the next loop turn, so nothing waits for
company. Replies are matched by order, which Redis guarantees per connection.

A batch that gets no answer within ``reply_timeout`` is abandoned: its connection is
closed (a late reply must never reach the next batch) and its callers fail. The
client has no socket timeout of its own (see ``gateway.app.redis_client``), so this
is what frees a connection to a server that stopped answering without closing it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class AutoPipeline:
    def __init__(self, redis: Redis, max_batch: int = 128, reply_timeout: float = 10.0) -> None:
        self.pool = redis.connection_pool
        self.max_batch = max_batch
        self.reply_timeout = reply_timeout
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (or its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((packed, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

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
