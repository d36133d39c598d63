"""Reading the server-sent events a gateway answers with: whole bodies, or frame by
frame from a live response."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import aiohttp

from gateway.sse import SSEEvent, SSEParser


def parse_sse(raw: bytes) -> list[SSEEvent]:
    """Every event of a body, parsed by the gateway's own SSE parser."""
    parser = SSEParser()
    return parser.feed(raw) + parser.close()


def data_frames(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body: JSON objects, and "[DONE]" as a string."""
    out: list[Any] = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def sse_frames(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of every SSE frame of a response body."""
    frames: list[tuple[str | None, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if event is not None or data:
            frames.append((event, "\n".join(data)))
    return frames


def json_frames(frames: list[tuple[str | None, str]]) -> list[dict[str, Any]]:
    """The JSON objects among ``sse_frames`` data (chunks, error bodies)."""
    return [json.loads(data) for _, data in frames if data.startswith("{")]


def content_of(chunks: Iterable[Any]) -> str:
    """The text of a stream's chunks (every choice's ``delta.content``); what is not a
    chunk object ("[DONE]") is skipped."""
    return "".join(
        (choice.get("delta") or {}).get("content") or ""
        for chunk in chunks
        if isinstance(chunk, dict)
        for choice in chunk.get("choices") or ()
    )


async def read_data_frames(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """Read ``count`` SSE data frames from a live response."""
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        line = await resp.content.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: "):
            frames.append(json.loads(line[len(b"data: ") :]))
    return frames


async def read_chunks(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """Read ``count`` content chunks (data frames with choices) of a live SSE response."""
    chunks: list[dict[str, Any]] = []
    while len(chunks) < count:
        line = await resp.content.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
            frame = json.loads(line[len(b"data: ") :])
            if frame.get("choices"):
                chunks.append(frame)
    return chunks


async def stream_events(resp: aiohttp.ClientResponse) -> tuple[bytes, list[SSEEvent]]:
    """A 200 event stream's raw body and events, its streaming headers checked."""
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    raw = await resp.read()
    return raw, parse_sse(raw)
