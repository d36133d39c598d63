"""A same-format stream (gateway.surfaces.native_messages / native_responses) as the
relay reads every provider's stream: a StreamTranslator whose events are
:class:`~gateway.providers.base.Relayed` bytes with their meter signals."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import orjson

from gateway.providers.base import Relayed, StreamEvent, UpstreamStreamError
from gateway.sse import encode_event
from gateway.surfaces.native_messages import NativeOut


class NativeStream(Protocol):
    done: bool
    error: UpstreamStreamError | None

    def feed(self, data: bytes) -> NativeOut: ...

    def close(self) -> NativeOut: ...


class RelayTranslator:
    """Feeds a native stream; each read's bytes and signals become one Relayed event."""

    def __init__(self, stream: NativeStream) -> None:
        self.stream = stream
        self.done = False
        self.error: UpstreamStreamError | None = None

    def feed(self, data: bytes) -> list[StreamEvent]:
        return self._after(self.stream.feed(data))

    def close(self) -> list[StreamEvent]:
        return self._after(self.stream.close())

    def _after(self, out: NativeOut) -> list[StreamEvent]:
        self.done, self.error = self.stream.done, self.stream.error
        return self._events(out)

    @staticmethod
    def _events(out: NativeOut) -> list[StreamEvent]:
        if not (out.data or out.deltas or out.usage is not None or out.finished):
            return []
        usage = out.usage
        if usage is not None and out.cache_write_1h_tokens:
            usage = dataclasses.replace(
                usage, cache_creation_1h_input_tokens=out.cache_write_1h_tokens
            )
        return [Relayed(out.data, out.deltas, out.finished, usage, out.usage_final)]


def responses_error(code: str, message: str) -> bytes:
    """The error event ending a native Responses stream (the openai SDK raises it)."""
    body = {"type": "error", "code": code, "message": message, "param": None}
    return encode_event(orjson.dumps(body), "error")
