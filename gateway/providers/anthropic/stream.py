"""An Anthropic Messages stream, pure: SSE bytes in, OpenAI chunks and the typed usage
out (:class:`AnthropicStreamTranslator`).

``message_start`` carries the input side of the usage and ``message_delta`` the
*cumulative* output count: the last value wins, nothing is summed.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.providers.anthropic.request import JSON_TOOL
from gateway.providers.anthropic.response import (
    anthropic_usage,
    finish_for,
    positive_count,
    tool_arguments,
)
from gateway.providers.base import StreamEvent, UpstreamStreamError
from gateway.providers.errortext import provider_code, with_code
from gateway.sse import EventTooLarge, SSEEvent, SSEParser


def _member(data: dict[str, Any], name: str) -> dict[str, Any]:
    """An event's object member (empty when absent); any other type fails the stream."""
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UpstreamStreamError("upstream_error", f"the provider sent an invalid {name}")
    return value


def _index(data: dict[str, Any]) -> int | None:
    """A content block's index: an integer (None when absent); else the stream fails."""
    index = data.get("index")
    if index is None or type(index) is int:
        return index
    raise UpstreamStreamError("upstream_error", "the provider sent an invalid block index")


class AnthropicStreamTranslator:
    """Messages SSE bytes in, OpenAI chunk dicts and the Usage out (pure, incremental;
    gateway.providers.base.StreamTranslator).

    ``feed`` bytes as they arrive, ``close`` at end of input. The assistant role rides
    on the first chunk that carries something (text, a tool call or the finish), not
    on ``message_start``: an error frame right after ``message_start`` (Anthropic's
    usual "overloaded") then fails the stream before its first chunk, while the
    gateway can still retry or fall back. The Usage (the last event) comes at
    ``message_stop``, or at ``close`` when the stream ended without one (some
    recordings lack the final blank line); none when its counts are unusable. A
    stream that ends before its ``message_delta`` was cut. Failures never cost the
    chunks that preceded them: ``feed`` and ``close`` return those, keep the failure
    in ``error`` and ``check()`` raises it (as do later ``feed`` / ``close`` calls):
    UpstreamStreamError, with ``declared=True`` for the provider's own ``error`` frame.
    """

    def __init__(
        self, created: int | None = None, secret: str = "", *, json_answer: bool = False
    ) -> None:
        self.parser = SSEParser()
        # The request asked for JSON: the forced tool's input streams as content.
        self.json_answer = json_answer
        self._json_block: int | None = None  # the Anthropic block index of that tool call
        self.secret = secret  # the provider key: no error code relayed may resemble it
        self.created = int(time.time()) if created is None else created
        self.id = ""
        self.model = ""
        self.usage: dict[str, Any] = {}  # Anthropic's counts as they came, merged
        self.sent_role = False
        self.saw_delta = False
        self.done = False  # the stream ended (its usage emitted): nothing follows
        self.error: UpstreamStreamError | None = None
        self._tools: dict[int | None, int] = {}  # Anthropic block index -> OpenAI tool index

    def check(self) -> None:
        """Raise the failure the input carried, if any."""
        if self.error is not None:
            raise self.error

    def feed(self, data: bytes) -> list[StreamEvent]:
        self.check()
        if self.done:
            return []
        try:
            events = self.parser.feed(data)
        except EventTooLarge as exc:  # the events before it still count
            out = self._events(exc.events)
            if self.error is None:
                self.error = UpstreamStreamError("upstream_error", f"the provider sent {exc}")
            return out
        return self._events(events)

    def close(self) -> list[StreamEvent]:
        self.check()
        if self.done:
            return []
        out = self._events(self.parser.close())
        if self.error is None and not self.done:
            if self.saw_delta:
                self._end(out)
            else:
                self.error = UpstreamStreamError(
                    "upstream_error", "the provider stream ended early"
                )
        return out

    def _events(self, events: list[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            if self.done:
                break
            try:
                self._event(event, out)
            except UpstreamStreamError as exc:
                self.error = exc
                break
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self.sent_role:
            self.sent_role = True
            delta = {"role": "assistant", **delta}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _end(self, out: list[StreamEvent]) -> None:
        """The stream's end: its usage, when usable, is the last event."""
        self.done = True
        usage = anthropic_usage(self.usage)
        if usage is not None:
            out.append(usage)

    def _event(self, event: SSEEvent, out: list[StreamEvent]) -> None:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamStreamError("upstream_error", "the provider sent invalid JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamStreamError("upstream_error", "the provider sent an invalid event")
        kind = data.get("type") or event.event
        if kind == "error" or event.event == "error":
            code = provider_code(data.get("error"), self.secret)
            raise UpstreamStreamError(
                "upstream_error", with_code("the provider reported an error", code), declared=True
            )
        if kind == "message_start":
            message = _member(data, "message")
            self.id = str(message.get("id") or "")
            self.model = str(message.get("model") or "")
            if isinstance(message.get("usage"), dict):
                self.usage.update(message["usage"])
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "content_block_delta":
            self._block_delta(data, out)
        elif kind == "message_delta":
            self.saw_delta = True
            usage = data.get("usage")
            if isinstance(usage, dict):
                # Cumulative counts, never summed: message_start's output_tokens (1) is
                # part of the final count. They only grow; should a later value be lower,
                # the higher one is kept (never under-bill).
                for key, value in usage.items():
                    if isinstance(value, int) and value > positive_count(self.usage.get(key)):
                        self.usage[key] = value
            delta = _member(data, "delta")
            if delta.get("stop_reason"):
                out.append(self._chunk({}, finish_for(delta["stop_reason"], self.json_answer)))
        elif kind == "message_stop":
            if not self.saw_delta:
                raise UpstreamStreamError("upstream_error", "the provider stream ended early")
            self._end(out)
        # ping, content_block_stop and unknown events carry nothing to relay

    def _block_start(self, data: dict[str, Any], out: list[StreamEvent]) -> None:
        block = _member(data, "content_block")
        if self.json_answer:
            if block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
                self._json_block = _index(data)
                if block.get("input"):  # complete up front (not streamed in pieces)
                    out.append(self._chunk({"content": tool_arguments(block["input"])}))
            return  # text around the JSON is not part of it
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            out.append(self._chunk({"content": block["text"]}))
        elif block.get("type") == "tool_use":
            index = self._tools[_index(data)] = len(self._tools)
            initial = block.get("input")
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": tool_arguments(initial) if initial else "",
                },
            }
            out.append(self._chunk({"tool_calls": [call]}))

    def _block_delta(self, data: dict[str, Any], out: list[StreamEvent]) -> None:
        delta = _member(data, "delta")
        kind = delta.get("type")
        fragment = delta.get("partial_json")
        if not isinstance(fragment, str):
            fragment = ""
        if self.json_answer:
            if kind == "input_json_delta" and _index(data) == self._json_block and fragment:
                out.append(self._chunk({"content": fragment}))
            return
        if kind == "text_delta":
            if isinstance(delta.get("text"), str) and delta["text"]:
                out.append(self._chunk({"content": delta["text"]}))
        elif kind == "input_json_delta":
            index = self._tools.get(_index(data))
            if index is not None and fragment:
                call = {"index": index, "function": {"arguments": fragment}}
                out.append(self._chunk({"tool_calls": [call]}))
        # thinking_delta, signature_delta, citations_delta: not part of the OpenAI shape
