"""A scripted fake upstream provider: a real aiohttp HTTP server on 127.0.0.1.

Integration tests point the gateway at ``FakeUpstream.base_url`` and talk to it over real
TCP; nothing patches HTTP clients.  The fake records exactly what it received
(``requests``) and answers with scripted ``Reply`` objects, consumed in order, falling
back to ``default`` (a realistic OpenAI / Anthropic reply that honours ``"stream"``).

Usage::

    upstream = FakeUpstream()
    await upstream.start()
    upstream.script(Reply(status=429, json=openai_error(429, "slow down"),
                          headers={"Retry-After": "1"}),
                    Reply(sse=openai_stream(["Hel", "lo"])))
    ...  # drive the gateway against upstream.base_url
    assert upstream.requests[0].json()["model"] == "gpt-4o-mini"
    await upstream.close()

Failure modes a ``Reply`` can simulate: slow first byte (``delay_before_headers``), slow
stream (``delay_between_slices``), abrupt TCP drop mid-body (``cut_after_bytes``) and a
stalled body (``hang_after_bytes``).  Client disconnects seen while a reply was still
being produced are counted in ``client_disconnects`` and flagged on the ``Recorded``.
"""

from __future__ import annotations

import asyncio
import collections
import json as _json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "DATA_DIR",
    "DEFAULT_ANTHROPIC_MODEL",
    "DEFAULT_OPENAI_MODEL",
    "FakeUpstream",
    "Recorded",
    "Reply",
    "Responder",
    "anthropic_error",
    "anthropic_message",
    "anthropic_stream",
    "choice",
    "chunk",
    "fixture",
    "openai_completion",
    "openai_error",
    "openai_stream",
    "slow_stream",
    "sse",
    "stream_over",
    "words",
]

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
DEFAULT_ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"
_CREATED = 1_700_000_000
_FINGERPRINT = "fp_fake0000"


def _dumps(obj: Any) -> str:
    # Compact separators, like the real OpenAI API.
    return _json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------
# Recorded requests and scripted replies
# --------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request exactly as the fake received it."""

    method: str
    path: str  # e.g. "/v1/chat/completions" (no query string)
    query: dict[str, str]
    headers: dict[str, str]  # names in the case they were received
    body: bytes
    disconnected: bool = False  # client went away before the reply was fully written
    completed: bool = False  # the reply was fully written
    cut: bool = False  # the fake dropped the connection on purpose (Reply.cut_after_bytes)
    peer: Any = None  # the client's (host, port): equal for requests on one connection

    def json(self) -> Any:
        return _json.loads(self.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive header lookup."""
        lname = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lname:
                return value
        return default


@dataclass
class Reply:
    """A scripted response.

    Body precedence: ``sse`` (text/event-stream, chunked, written in ``slice_size``
    slices), else ``body`` (raw bytes with ``content_type``), else ``json``.  With
    neither, the body is empty.  Non-SSE bodies are sent with a Content-Length; they are
    also written in slices when ``cut_after_bytes`` / ``hang_after_bytes`` /
    ``delay_between_slices`` is set.
    """

    status: int = 200
    json: Any = None
    sse: bytes | None = None
    body: bytes | None = None
    content_type: str = "application/json"  # for ``body``; json/sse set their own
    slice_size: int = 97
    delay_between_slices: float = 0.0
    delay_before_headers: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    cut_after_bytes: int | None = None  # write N body bytes, then abort the TCP connection
    hang_after_bytes: int | None = None  # write N body bytes, then stall until the client leaves
    delay_before_end: float = 0.0  # pause between the last body byte and the end of the body

    def payload(self) -> tuple[bytes, str]:
        """The body bytes and their Content-Type."""
        if self.sse is not None:
            return self.sse, "text/event-stream; charset=utf-8"
        if self.body is not None:
            return self.body, self.content_type
        if self.json is not None:
            return _dumps(self.json).encode(), "application/json"
        return b"", self.content_type


Responder = Reply | Callable[[Recorded], Reply]


# --------------------------------------------------------------------------------------
# Payload builders (pure functions)
# --------------------------------------------------------------------------------------


def openai_usage(
    prompt_tokens: int = 11,
    completion_tokens: int = 3,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_completion(
    content: str = "Hello there",
    model: str = DEFAULT_OPENAI_MODEL,
    prompt_tokens: int = 11,
    completion_tokens: int = 3,
    finish_reason: str = "stop",
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    id_: str = "chatcmpl-fake0001",
    created: int = _CREATED,
) -> dict[str, Any]:
    """A real-shaped OpenAI ``chat.completion`` object."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": openai_usage(prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens),
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }


def openai_stream(
    pieces: list[str],
    model: str = DEFAULT_OPENAI_MODEL,
    prompt_tokens: int = 11,
    completion_tokens: int = 3,
    include_usage: bool = True,
    finish_reason: str = "stop",
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    id_: str = "chatcmpl-fake0001",
    created: int = _CREATED,
) -> bytes:
    """A data-only OpenAI chat.completion.chunk SSE stream, ending in ``data: [DONE]``."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> str:
        obj = {
            "id": id_,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
            "choices": choices,
            "usage": usage,
        }
        return f"data: {_dumps(obj)}\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    out = [chunk(choice({"role": "assistant", "content": "", "refusal": None}), None)]
    out += [chunk(choice({"content": piece}), None) for piece in pieces]
    out.append(chunk(choice({}, finish_reason), None))
    if include_usage:
        usage = openai_usage(prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens)
        out.append(chunk([], usage))
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()


_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def openai_error(
    status: int = 500,
    message: str = "The server had an error while processing your request.",
    type_: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``.

    ``type_``/``code`` default to what OpenAI typically sends for ``status``.
    """
    default_type, default_code = _OPENAI_ERROR_TYPES.get(status, ("server_error", None))
    return {
        "error": {
            "message": message,
            "type": type_ if type_ is not None else default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


def anthropic_message(
    content: str = "Hello there",
    model: str = DEFAULT_ANTHROPIC_MODEL,
    input_tokens: int = 11,
    output_tokens: int = 3,
    stop_reason: str = "end_turn",
    *,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    id_: str = "msg_fake0001",
) -> dict[str, Any]:
    """A real-shaped Anthropic Messages API response."""
    return {
        "id": id_,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": content}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": cache_creation_input_tokens,
            "cache_read_input_tokens": cache_read_input_tokens,
            "output_tokens": output_tokens,
        },
    }


def anthropic_stream(
    pieces: list[str],
    model: str = DEFAULT_ANTHROPIC_MODEL,
    input_tokens: int = 11,
    output_tokens: int = 3,
    stop_reason: str = "end_turn",
    *,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    id_: str = "msg_fake0001",
) -> bytes:
    """An Anthropic Messages SSE stream (``event:`` + ``data:`` lines)."""

    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {_dumps(data)}\n\n"

    start_message = anthropic_message(
        "",
        model,
        input_tokens,
        1,
        stop_reason,
        cache_creation_input_tokens=cache_creation_input_tokens,
        cache_read_input_tokens=cache_read_input_tokens,
        id_=id_,
    )
    start_message.update(content=[], stop_reason=None)
    out = [
        event("message_start", {"type": "message_start", "message": start_message}),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        'event: ping\ndata: {"type": "ping"}\n\n',  # sic: the real API spaces this one
    ]
    out += [
        event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
        for piece in pieces
    ]
    out += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                # Cumulative usage, as the real API sends it.
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": cache_creation_input_tokens,
                    "cache_read_input_tokens": cache_read_input_tokens,
                    "output_tokens": output_tokens,
                },
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return "".join(out).encode()


def anthropic_error(type_: str = "overloaded_error", message: str = "Overloaded") -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": type_, "message": message}}


def fixture(name: str) -> bytes:
    """Raw bytes of ``tests/data/<name>`` (recorded provider streams and bodies)."""
    return (DATA_DIR / name).read_bytes()


def choice(
    delta: dict[str, Any] | str | None = None,
    finish: str | None = None,
    *,
    index: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """One choice of a chat.completion.chunk: ``delta`` a dict, or a string (its
    content), or None (an empty delta); ``extra`` adds fields to the choice."""
    if delta is None:
        delta = {}
    elif isinstance(delta, str):
        delta = {"content": delta}
    return {"index": index, "delta": delta, "finish_reason": finish, **extra}


def chunk(
    delta: dict[str, Any] | str | None = None,
    finish: str | None = None,
    *,
    index: int = 0,
    choices: list[dict[str, Any]] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A chat.completion.chunk with one choice (see ``choice``), or with ``choices`` as
    given (``choices=[]``: a usage-style chunk); ``top`` adds or replaces top-level
    fields (``usage=...``, ``id=...``, a server's own fields)."""
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [choice(delta, finish, index=index)] if choices is None else choices,
    }
    return out | top


def sse(*frames: dict[str, Any] | str, done: bool = False, event: str | None = None) -> bytes:
    """An SSE body of ``data:`` frames (dicts as compact JSON, strings as they are),
    each under ``event: <event>`` when given; ``done`` ends it with ``data: [DONE]``."""
    head = f"event: {event}\n" if event else ""
    body = "".join(
        head + "data: " + (f if isinstance(f, str) else _dumps(f)) + "\n\n" for f in frames
    )
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def words(count: int, width: int = 3) -> list[str]:
    """``count`` distinct words (``w000 ``, ``w001 ``, ...): a stream's pieces."""
    return [f"w{i:0{width}d} " for i in range(count)]


def slow_stream(
    pieces: int = 60,
    *,
    delay: float = 0.05,
    slice_size: int = 100,
    prompt_tokens: int = 20,
    completion_tokens: int | None = None,
) -> Reply:
    """A long OpenAI stream of ``pieces`` words (``w000 ``...), usage only at the very
    end (``completion_tokens`` defaults to ``pieces``), written ``slice_size`` bytes
    every ``delay`` seconds."""
    sse_ = openai_stream(
        words(pieces),
        prompt_tokens=prompt_tokens,
        completion_tokens=pieces if completion_tokens is None else completion_tokens,
    )
    return Reply(sse=sse_, slice_size=slice_size, delay_between_slices=delay)


def stream_over(seconds: float, pieces: int = 20, *, prompt_tokens: int = 20) -> Reply:
    """An OpenAI stream of ``pieces`` words (``w00 ``...) spread over about ``seconds``
    (97-byte slices), reporting ``prompt_tokens`` and one output token per word."""
    sse_ = openai_stream(
        words(pieces, width=2), prompt_tokens=prompt_tokens, completion_tokens=pieces
    )
    slices = math.ceil(len(sse_) / 97)
    return Reply(sse=sse_, slice_size=97, delay_between_slices=seconds / slices)


class UsagePerRequest:
    """A default reply reporting a different usage per request ("req-NN" messages),
    after a delay so that concurrent requests overlap; remembers what it reported."""

    def __init__(self, delay: float = 0.1) -> None:
        self.delay = delay
        self.reported: dict[str, tuple[int, int]] = {}

    def __call__(self, rec: Recorded) -> Reply:
        body = rec.json()
        text = body["messages"][0]["content"]
        n = int(text.split("-")[1])
        prompt, completion = 10 + n % 7, 5 + n % 13
        assert text not in self.reported, f"{text} asked twice"
        self.reported[text] = (prompt, completion)
        if body.get("stream"):
            sse = openai_stream(["o", "k"], prompt_tokens=prompt, completion_tokens=completion)
            return Reply(sse=sse, delay_before_headers=self.delay)
        answer = openai_completion(prompt_tokens=prompt, completion_tokens=completion)
        return Reply(json=answer, delay_before_headers=self.delay)


def default_reply(rec: Recorded) -> Reply:
    """The fake's default: a valid reply for the endpoint, honouring ``"stream"``.

    * POST ``.../chat/completions``: OpenAI chat.completion, or an SSE stream when
      ``stream`` is true (with a usage chunk iff ``stream_options.include_usage``).
    * POST ``.../messages``: Anthropic message, or its SSE stream.
    * GET ``.../models``: a one-model OpenAI list.
    * anything else: 404 with an OpenAI error body.

    ``model`` echoes the request's model when it sent one.
    """
    try:
        body = rec.json() if rec.body else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    stream = body.get("stream") is True
    req_model = body.get("model")
    path = rec.path.rstrip("/")
    if rec.method == "POST" and path.endswith("/chat/completions"):
        model = req_model if isinstance(req_model, str) else DEFAULT_OPENAI_MODEL
        if stream:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            return Reply(sse=openai_stream(["Hello", " there"], model, include_usage=include_usage))
        return Reply(json=openai_completion(model=model))
    if rec.method == "POST" and path.endswith("/messages"):
        model = req_model if isinstance(req_model, str) else DEFAULT_ANTHROPIC_MODEL
        if stream:
            return Reply(sse=anthropic_stream(["Hello", " there"], model))
        return Reply(json=anthropic_message(model=model))
    if rec.method == "GET" and path.endswith("/models"):
        return Reply(
            json={
                "object": "list",
                "data": [
                    {
                        "id": DEFAULT_OPENAI_MODEL,
                        "object": "model",
                        "created": _CREATED,
                        "owned_by": "system",
                    }
                ],
            }
        )
    return Reply(
        status=404,
        json=openai_error(404, f"Unknown request URL: {rec.method} {rec.path}", code="unknown_url"),
    )


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


def _headers_dict(request: web.Request) -> dict[str, str]:
    """Headers with their received name case; repeated headers are joined with ", "."""
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = str(name)
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


class _CutError(Exception):
    """Internal: the reply deliberately aborted the connection."""


class FakeUpstream:
    """A real HTTP server on 127.0.0.1:<random port> that records and replays."""

    def __init__(self, default: Responder = default_reply, *, prefix: str = "/v1") -> None:
        self.default: Responder = default
        self.prefix = prefix
        self.requests: list[Recorded] = []
        self.client_disconnects = 0
        self.port = 0
        self._queue: collections.deque[Responder] = collections.deque()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.prefix

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: the handler is cancelled as soon as the client goes away,
        # which is how stalled/slow replies notice a disconnect.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- scripting and inspection -----------------------------------------------------

    def script(self, *replies: Responder) -> None:
        """Queue replies (or callables building one from the request), used in order."""
        self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        return len(self._queue)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def wait_disconnect(self, timeout: float = 5, count: int = 1) -> None:  # noqa: ASYNC109
        """Wait until ``client_disconnects >= count`` (TimeoutError otherwise)."""
        await self._wait_for(lambda: self.client_disconnects >= count, timeout)

    async def wait_requests(self, count: int, timeout: float = 5) -> None:  # noqa: ASYNC109
        """Wait until at least ``count`` requests have been received."""
        await self._wait_for(lambda: len(self.requests) >= count, timeout)

    async def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # -- request handling -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await self._record_and_reply(request)
        finally:
            self._tasks.discard(task)

    async def _record_and_reply(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=_headers_dict(request),
            body=body,
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        self.requests.append(rec)
        self._notify()
        responder = self._queue.popleft() if self._queue else self.default
        reply = responder(rec) if callable(responder) else responder
        try:
            resp = await self._serve(request, reply)
        except _CutError:
            rec.cut = True
            self._notify()
            # The transport is aborted: connection_lost() cancels this handler shortly
            # (handler_cancellation), which aiohttp treats as a premature disconnect and
            # ends quietly.  Not counted as a client disconnect.
            await asyncio.sleep(5)
            raise ConnectionResetError("connection cut by FakeUpstream") from None
        except (asyncio.CancelledError, ConnectionError):
            if not self._closing:
                rec.disconnected = True
                self.client_disconnects += 1
                self._notify()
            raise
        rec.completed = True
        self._notify()
        return resp

    async def _serve(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay_before_headers:
            await asyncio.sleep(reply.delay_before_headers)
        payload, content_type = reply.payload()
        sliced = (
            reply.sse is not None
            or reply.cut_after_bytes is not None
            or reply.hang_after_bytes is not None
            or reply.delay_between_slices > 0
            or reply.delay_before_end > 0
        )
        # Reply.headers may override Content-Type (case-insensitively).
        headers = CIMultiDict({"Content-Type": content_type})
        headers.update(reply.headers)
        if not sliced:
            return web.Response(status=reply.status, body=payload, headers=headers)

        if reply.sse is not None:
            headers.setdefault("Cache-Control", "no-cache")
        resp = web.StreamResponse(status=reply.status, headers=headers)
        if reply.sse is not None:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(payload)
        await resp.prepare(request)  # sends the status line and headers immediately

        limit = len(payload)
        if reply.cut_after_bytes is not None:
            limit = min(limit, reply.cut_after_bytes)
        if reply.hang_after_bytes is not None:
            limit = min(limit, reply.hang_after_bytes)
        step = max(1, reply.slice_size)
        for offset in range(0, limit, step):
            if offset and reply.delay_between_slices:
                await asyncio.sleep(reply.delay_between_slices)
            await resp.write(payload[offset : min(offset + step, limit)])

        if reply.cut_after_bytes is not None and reply.cut_after_bytes <= len(payload):
            # Let the written bytes reach the socket, then drop the connection hard.
            await asyncio.sleep(0.01)
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise _CutError
        if reply.hang_after_bytes is not None:
            # Stall until the client goes away (handler cancellation) or close().
            await asyncio.get_running_loop().create_future()
        if reply.delay_before_end:
            await asyncio.sleep(reply.delay_before_end)
        await resp.write_eof()
        return resp
