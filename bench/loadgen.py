"""An asyncio HTTP/1.1 load generator: keep-alive connections, closed loop, uvloop.

The client is a bare ``asyncio.Protocol`` with httptools' C parser (llhttp) and
pre-encoded request bytes, so its own cost per request is small next to the
server's; still, on a 2-core box it competes for CPU, which is why every run also
targets the mock upstream directly (that figure bounds what the client can do).

Modes:
    unary   C connections, each sends a request as soon as the previous answer is
            complete, for D seconds: requests/s and p50/p90/p99 latency.
    stream  C concurrent streams (``"stream": true``), each restarted when it ends:
            SSE events received per second, completed streams, time to first event.
    Latency at concurrency 1 is ``unary`` with ``-c 1``.

Only answers completed inside the window [warmup, warmup + D) count; non-200
answers, broken connections and streams with a wrong event count are counted as
errors over the whole run. Standalone::

    .venv/bin/python bench/loadgen.py http://127.0.0.1:9100/v1/chat/completions -c 16 -d 5
    .venv/bin/python bench/loadgen.py URL --stream -c 64 -d 5 --expect-events 52
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

DEFAULT_BODY: dict[str, Any] = {
    "model": "default",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in a few words."},
    ],
    "max_tokens": 64,
}


def request_bytes(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    parts = urlsplit(url)
    payload = orjson.dumps(body)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def body_for(stream: bool) -> dict[str, Any]:
    body = dict(DEFAULT_BODY)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class Stats:
    recording: bool = False
    done: int = 0  # answers completed inside the window
    latencies_ns: list[int] = field(default_factory=list)
    events: int = 0  # SSE events received inside the window (stream mode)
    ttfe_ns: list[int] = field(default_factory=list)  # time to first event
    total: int = 0  # answers completed over the whole run
    non_200: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    conn_errors: int = 0
    bad_streams: int = 0  # 200 streams whose event count was not the expected one
    sample_error: str = ""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; ``request()`` sends and awaits the full answer."""

    def __init__(self, stats: Stats, count_events: bool) -> None:
        self.stats = stats
        self.count_events = count_events
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.status = 0
        self.keep_alive = True
        self.events = 0
        self.prev_nl = False
        self.first_event_ns = 0
        self.body_head = b""

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(exc or ConnectionResetError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            if len(self.body_head) < 300:
                self.body_head += body[:300]
            return
        if not self.count_events:
            return
        n = body.count(b"\n\n")
        if self.prev_nl and body[:1] == b"\n":
            n += 1
        self.prev_nl = body[-1:] == b"\n"
        if n:
            if not self.events:
                self.first_event_ns = time.perf_counter_ns()
            self.events += n
            if self.stats.recording:
                self.stats.events += n

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def request(self, data: bytes) -> None:
        assert self.transport is not None
        self.status = 0
        self.events = 0
        self.prev_nl = False
        self.first_event_ns = 0
        self.body_head = b""
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        await self.waiter


async def _connect(host: str, port: int, stats: Stats, count_events: bool) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Conn(stats, count_events), host, port)
    return conn


async def _worker(
    host: str,
    port: int,
    data: bytes,
    stats: Stats,
    stop_at: float,
    stream: bool,
    expect_events: int,
) -> None:
    conn: _Conn | None = None
    while time.perf_counter() < stop_at:
        try:
            if conn is None or conn.lost or not conn.keep_alive:
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = await _connect(host, port, stats, stream)
            started = time.perf_counter_ns()
            await conn.request(data)
        except (OSError, httptools.HttpParserError) as exc:
            stats.conn_errors += 1
            stats.sample_error = stats.sample_error or f"{type(exc).__name__}: {exc}"
            conn = None
            await asyncio.sleep(0.01)
            continue
        ended = time.perf_counter_ns()
        stats.total += 1
        if conn.status != 200:
            stats.non_200 += 1
            stats.statuses[conn.status] = stats.statuses.get(conn.status, 0) + 1
            if not stats.sample_error:
                stats.sample_error = f"HTTP {conn.status}: {conn.body_head[:300]!r}"
            continue
        if stream and expect_events and conn.events != expect_events:
            stats.bad_streams += 1
            if not stats.sample_error:
                stats.sample_error = f"stream had {conn.events} events, expected {expect_events}"
        if stats.recording:
            stats.done += 1
            stats.latencies_ns.append(ended - started)
            if stream and conn.first_event_ns:
                stats.ttfe_ns.append(conn.first_event_ns - started)
    if conn is not None and conn.transport is not None:
        conn.transport.close()


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[k])


@dataclass
class Result:
    mode: str
    concurrency: int
    duration: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    events_per_s: float = 0.0
    ttfe_p50_ms: float = float("nan")
    total: int = 0
    non_200: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    conn_errors: int = 0
    bad_streams: int = 0
    sample_error: str = ""

    @property
    def errors(self) -> int:
        return self.non_200 + self.conn_errors + self.bad_streams


async def run_load(
    url: str,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 0.5,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    expect_events: int = 0,
    body: dict[str, Any] | None = None,
) -> Result:
    """Closed-loop load on ``url``; the window is [warmup, warmup + duration)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    data = request_bytes(url, body if body is not None else body_for(stream), headers)
    stats = Stats()
    start = time.perf_counter()
    window_start = start + warmup
    stop_at = window_start + duration
    loop = asyncio.get_running_loop()

    def set_recording(on: bool) -> None:
        stats.recording = on

    loop.call_at(loop.time() + warmup, set_recording, True)
    loop.call_at(loop.time() + warmup + duration, set_recording, False)
    workers = [
        asyncio.ensure_future(_worker(host, port, data, stats, stop_at, stream, expect_events))
        for _ in range(concurrency)
    ]
    # Let in-flight answers finish (bounded), they are not counted.
    done, pending = await asyncio.wait(workers, timeout=warmup + duration + 30)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            stats.conn_errors += 1
            stats.sample_error = stats.sample_error or repr(task.exception())
    lat = sorted(stats.latencies_ns)
    ttfe = sorted(stats.ttfe_ns)
    return Result(
        mode="stream" if stream else "unary",
        concurrency=concurrency,
        duration=duration,
        rps=stats.done / duration,
        p50_ms=percentile(lat, 50) / 1e6,
        p90_ms=percentile(lat, 90) / 1e6,
        p99_ms=percentile(lat, 99) / 1e6,
        events_per_s=stats.events / duration,
        ttfe_p50_ms=percentile(ttfe, 50) / 1e6,
        total=stats.total,
        non_200=stats.non_200,
        statuses=stats.statuses,
        conn_errors=stats.conn_errors,
        bad_streams=stats.bad_streams,
        sample_error=stats.sample_error,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="closed-loop HTTP/1.1 load generator")
    parser.add_argument("url")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-w", "--warmup", type=float, default=0.5)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--expect-events", type=int, default=0, help="SSE events per stream")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    import uvloop

    result = uvloop.run(
        run_load(
            args.url,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            stream=args.stream,
            headers=headers,
            expect_events=args.expect_events,
        )
    )
    out = dict(result.__dict__)
    sys.stdout.write(
        orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n"
    )
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
