"""The upstream HTTP layer (DESIGN section 6, billing per section 5): its timeouts, what
a failure before the request was sent costs, a 200 that is not the answer asked for,
and the bounds on what an upstream can make the gateway hold.

Real fake upstream over TCP (raw sockets where HTTP framing itself must be broken),
real Redis, the gateway in-process. The rule checked throughout: a request that never
reached the provider is not billed and may be retried or fall back; once the provider
may have done the work (a 200 came, or a unary request was sent and timed out), the
worst case is billed and the request is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import gateway.providers.transport
import gateway.sse
from tests.support.harness import (
    PROVIDER_KEY,
    Client,
    GatewayFactory,
    bearer,
    chat_body,
    provider_entry,
)
from tests.support.metrics import metric
from tests.support.ports import free_port
from tests.support.upstream import (
    FakeUpstream,
    Reply,
    chunk,
    openai_completion,
    openai_error,
    openai_stream,
    sse,
)

URL = "/v1/projects/alpha/chat/completions"


def setup(
    providers: dict[str, dict[str, Any]], attempts: int = 1, routes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """make_gateway() arguments: these providers, project alpha routed to ``routes`` (by
    default the first provider) in order, ``attempts`` per route."""
    targets = [{"provider": p, "model": "gpt-4o-mini"} for p in routes or list(providers)[:1]]
    return {
        "gateway": {
            "providers": providers,
            "resilience": {"retries": {"attempts_per_target": attempts, "backoff_base_ms": 10}},
        },
        "projects": {"alpha": {"models": {"default": {"routes": targets}}}},
    }


async def estimated(client: Client, reason: str) -> float:
    """Requests billed at an estimate (the worst case, without usage) for ``reason``."""
    return await metric(client, "gateway_estimated_usage_total", project="alpha", reason=reason)


def error_events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in raw.split(b"\n\n"):
        if frame.startswith(b"event: error\n"):
            out.append(json.loads(frame.split(b"data: ", 1)[1]))
    return out


RawReply = Callable[[asyncio.StreamWriter], Awaitable[None]]
# ``raw_upstream(reply)``: the base URL of a raw TCP server answering with ``reply``.
RawUpstream = Callable[[RawReply], Awaitable[str]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    """A TCP server that reads one HTTP request per connection and lets the test write
    the answer byte by byte; returns its base URL."""
    servers: list[asyncio.Server] = []
    # The connection handlers still running at teardown (a reply that sleeps past the
    # test): cancelled and awaited here, so none is left pending when the loop closes.
    handlers: set[asyncio.Task[None]] = set()

    async def start(reply: RawReply) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                await reply(writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                handlers.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"

    yield start
    for server in servers:
        server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    for server in servers:
        await server.wait_closed()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose connection attempts are never answered (its accept queue is full, so
    the kernel drops their SYNs): connecting there times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # in progress: never accepted
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except TimeoutError:
            pass  # a blackhole, as it should be
        else:
            pytest.skip("this kernel accepts connections past a full accept queue")
        yield port
    finally:
        for s in (listener, *fillers):
            s.close()


# --------------------------------------------------------------------------- timeouts


async def test_a_unary_answer_slower_than_idle_is_bounded_by_total(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """A unary answer's headers come when the whole answer is ready: waiting for them is
    generation time, which only ``total`` bounds (not ``idle``, not ``first_byte``)."""
    client, _, creds = await make_gateway(
        **setup({"upstream": provider_entry(upstream.base_url, first_byte=0.5, idle=0.5, total=5)})
    )
    upstream.script(Reply(json=openai_completion(), delay_before_headers=1.2))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["usage"]["total_tokens"] == 14
    assert len(upstream.requests) == 1
    assert await estimated(client, "timeout") == 0


async def test_a_unary_body_that_stalls_is_cut_after_idle(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """Once the headers came the answer is ready: a body that stops arriving is cut
    after ``idle`` (the provider did the work: billed, not retried)."""
    client, _, creds = await make_gateway(
        **setup({"upstream": provider_entry(upstream.base_url, idle=0.3, total=10)}, attempts=2)
    )
    upstream.script(Reply(json=openai_completion(), hang_after_bytes=20))
    started = time.monotonic()
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 504, await resp.text()
    assert time.monotonic() - started < 3
    assert len(upstream.requests) == 1
    assert await estimated(client, "timeout") == 1


async def test_stream_headers_are_bounded_by_first_byte_not_idle(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        **setup({"upstream": provider_entry(upstream.base_url, first_byte=4, idle=0.5)})
    )
    upstream.script(Reply(sse=openai_stream(["late", " but fine"]), delay_before_headers=1.2))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    raw = await resp.read()
    assert b"late" in raw
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_first_byte_is_one_deadline_for_the_headers_and_the_first_chunk(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """Headers after 1.5 s, then a comment, then the first chunk 1.5 s later: 3 s after
    the send, past first_byte (2 s), although neither wait alone exceeded it."""
    client, _, creds = await make_gateway(
        **setup({"upstream": provider_entry(upstream.base_url, first_byte=2, idle=5)})
    )
    stream = openai_stream(["too", " late"])
    size = len(stream)
    comment = b": " + b"x" * (size - 4) + b"\n\n"  # one slice: sent with the headers
    upstream.script(
        Reply(
            sse=comment + stream,
            slice_size=size,
            delay_before_headers=1.5,
            delay_between_slices=1.5,
        )
    )
    started = time.monotonic()
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    elapsed = time.monotonic() - started
    assert resp.status == 504, await resp.text()
    assert elapsed < 2.8, elapsed


async def test_garbled_chunked_encoding_mid_stream_ends_after_idle(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    """A chunk size that is not hex: aiohttp fails the connection but not the body being
    read, which would wait for ``total``. The idle timeout ends it."""

    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        first = sse(chunk("hello"))
        writer.write(b"%x\r\n" % len(first) + first + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"zzzz\r\nboom\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    base = await raw_upstream(reply)
    client, _, creds = await make_gateway(**setup({"raw": provider_entry(base, idle=0.5, total=8)}))
    started = time.monotonic()
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    raw = await resp.read()
    assert time.monotonic() - started < 4
    assert b"hello" in raw
    [error] = error_events(raw)
    assert error["data"]["code"] == "upstream_timeout"


# --------------------------------------------------------------------------- not sent


@pytest.mark.parametrize("failure", ["connect_timeout", "refused"])
async def test_a_unary_request_that_was_never_sent_is_retried_unbilled(
    make_gateway: GatewayFactory, upstream: FakeUpstream, blackhole: int, failure: str
) -> None:
    """A connect timeout (or a refused connection) reached nobody: the attempt is
    retried, then the next route serves the request, and only its answer is billed."""
    port = blackhole if failure == "connect_timeout" else free_port()
    dead = provider_entry(f"http://127.0.0.1:{port}/v1", connect=0.3)
    client, _, creds = await make_gateway(
        **setup(
            {"dead": dead, "upstream": provider_entry(upstream.base_url)},
            attempts=2,
            routes=("dead", "upstream"),
        )
    )
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    assert len(upstream.requests) == 1
    status = "http_504" if failure == "connect_timeout" else "http_502"
    errors = await metric(client, "gateway_upstream_errors_total", provider="dead", reason=status)
    assert errors == 2  # both attempts on the dead route
    assert await estimated(client, "timeout") == 0
    assert await metric(client, "gateway_estimated_usage_total", project="alpha") == 0


async def test_a_connect_timeout_alone_is_a_504_billed_at_nothing(
    make_gateway: GatewayFactory, blackhole: int
) -> None:
    dead = provider_entry(f"http://127.0.0.1:{blackhole}/v1", connect=0.3)
    client, _, creds = await make_gateway(**setup({"dead": dead}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 504, await resp.text()
    assert await metric(client, "gateway_estimated_usage_total", project="alpha") == 0


# --------------------------------------------------------------------------- a 200 that is no answer


NOT_A_STREAM = {
    "json_error": Reply(json=openai_error(500, "model overloaded", type_="server_error")),
    "html": Reply(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
}


@pytest.mark.parametrize("case", list(NOT_A_STREAM))
async def test_a_200_that_is_not_an_event_stream_is_retried_and_falls_back(
    make_gateway: GatewayFactory, upstream: FakeUpstream, case: str
) -> None:
    """On a stream request, a 200 with a JSON error or an HTML page: the provider never
    started a stream, so nothing is billed, and the request is retried, then falls back
    (both routes reach the same fake, which answers the third request normally)."""
    client, _, creds = await make_gateway(
        **setup(
            {
                "flaky": provider_entry(upstream.base_url),
                "upstream": provider_entry(upstream.base_url),
            },
            attempts=2,
            routes=("flaky", "upstream"),
        )
    )
    upstream.script(NOT_A_STREAM[case], NOT_A_STREAM[case])
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert len(upstream.requests) == 3
    assert await metric(client, "gateway_estimated_usage_total", project="alpha") == 0
    errors = await metric(client, "gateway_upstream_errors_total", provider="flaky")
    assert errors == 2


DECLARED = {
    # an error object sent with a 200: mapped as the status its type goes with
    "invalid_api_key": (
        openai_error(401, f"Incorrect API key provided: {PROVIDER_KEY}", code="invalid_api_key"),
        422,
    ),
    "invalid_request": (openai_error(400, f"bad value near {PROVIDER_KEY}"), 422),
    "rate_limited": (openai_error(429, "slow down"), 429),
    "server_error": (openai_error(500, f"oops {PROVIDER_KEY}"), 502),
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("case", list(DECLARED))
async def test_an_error_sent_with_a_200_is_mapped_like_its_status(
    make_gateway: GatewayFactory, upstream: FakeUpstream, case: str, stream: bool
) -> None:
    client, _, creds = await make_gateway(**setup({"upstream": provider_entry(upstream.base_url)}))
    body, status = DECLARED[case]
    upstream.script(Reply(json=body))
    resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
    text = await resp.text()
    assert resp.status == status, text
    assert PROVIDER_KEY not in text
    assert "DO-NOT-LEAK" not in text
    if case == "invalid_api_key":
        assert (await resp.json())["error"] == "byok_key_rejected"
    if case == "invalid_request":
        message = (await resp.json())["message"]
        assert message == "provider upstream rejected the request (invalid_request_error)"
    assert await metric(client, "gateway_estimated_usage_total", project="alpha") == 0


# --------------------------------------------------------------------------- a 200 that cannot be read


UNREADABLE = {
    "invalid_json": Reply(body=b'{"id": "chatcmpl-1", "choi', content_type="application/json"),
    "invalid_shape": Reply(json={"id": "chatcmpl-1", "choices": "none"}),
    "html": Reply(body=b"<html>ok</html>", content_type="text/html"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
async def test_an_unreadable_unary_200_is_billed_and_not_retried(
    make_gateway: GatewayFactory, upstream: FakeUpstream, case: str
) -> None:
    """After a 200 the provider did (and bills) the work: an answer that cannot be read
    is billed at the worst case, and a retry would pay for it twice."""
    client, _, creds = await make_gateway(
        **setup({"upstream": provider_entry(upstream.base_url)}, attempts=2)
    )
    upstream.script(UNREADABLE[case])
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 502, await resp.text()
    assert len(upstream.requests) == 1
    assert await estimated(client, "answer_lost") == 1


async def test_a_close_delimited_unary_answer_cut_short_is_billed_and_not_retried(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    """No Content-Length: the body ends when the connection closes, so a cut looks like a
    complete (invalid) body."""
    calls = []
    full = json.dumps(openai_completion()).encode()

    async def reply(writer: asyncio.StreamWriter) -> None:
        calls.append(1)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        writer.write(head + full[: len(full) // 2])
        await writer.drain()

    base = await raw_upstream(reply)
    client, _, creds = await make_gateway(**setup({"raw": provider_entry(base)}, attempts=2))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 502, await resp.text()
    assert len(calls) == 1
    assert await estimated(client, "answer_lost") == 1


# --------------------------------------------------------------------------- size bounds


@pytest.mark.parametrize("framing", ["content_length", "chunked"])
async def test_a_unary_answer_over_the_size_cap_is_a_billed_502(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    framing: str,
) -> None:
    monkeypatch.setattr(gateway.providers.transport, "MAX_ANSWER_BYTES", 64 * 1024)
    client, _, creds = await make_gateway(
        **setup({"upstream": provider_entry(upstream.base_url)}, attempts=2)
    )
    answer = json.dumps(openai_completion()).encode() + b" " * (100 * 1024)  # valid JSON
    if framing == "chunked":
        upstream.script(Reply(sse=answer, slice_size=16 * 1024))  # no Content-Length
    else:
        upstream.script(Reply(body=answer, content_type="application/json"))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 502, await resp.text()
    assert "over 65536 bytes" in (await resp.json())["detail"]
    assert len(upstream.requests) == 1
    assert await estimated(client, "answer_lost") == 1


async def test_an_error_body_over_the_cap_is_not_read(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """Only MAX_ERROR_BODY_BYTES of an error body are read: past that, its code is
    not used (the status alone decides the answer)."""
    client, _, creds = await make_gateway(**setup({"upstream": provider_entry(upstream.base_url)}))
    cap = gateway.providers.transport.MAX_ERROR_BODY_BYTES
    upstream.script(
        Reply(status=400, json=openai_error(400, "bad temperature" + " " * cap, code="bad_temp")),
        Reply(status=400, json=openai_error(400, "bad temperature", code="bad_temp")),
    )
    big = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert big.status == 422
    assert "bad_temp" not in (await big.json())["message"]
    small = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert small.status == 422
    assert "bad_temp" in (await small.json())["message"]


@pytest.mark.parametrize("shape", ["one_line", "data_lines"])
async def test_a_stream_event_over_the_size_cap_ends_the_stream(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
) -> None:
    """An unterminated line, or data lines without the blank line that ends an event:
    the stream fails as soon as the event is over the cap (instead of buffering until
    the idle or total timeout), with the chunks before it relayed."""
    monkeypatch.setattr(gateway.sse, "MAX_EVENT_BYTES", 64 * 1024)
    client, _, creds = await make_gateway(
        **setup({"upstream": provider_entry(upstream.base_url, idle=5, total=10)})
    )
    if shape == "one_line":
        endless = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"a" * 200_000
    else:
        endless = (b"data: " + b"a" * 1000 + b"\n") * 200
    body = sse(chunk("hello")) + endless
    upstream.script(Reply(sse=body, slice_size=16 * 1024, hang_after_bytes=len(body)))
    started = time.monotonic()
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    raw = await resp.read()
    assert time.monotonic() - started < 3
    assert b"hello" in raw
    [error] = error_events(raw)
    assert error["data"]["code"] == "upstream_error"
    assert "over 65536 bytes" in error["data"]["message"]
    await upstream.wait_disconnect()  # the gateway let go of the upstream
