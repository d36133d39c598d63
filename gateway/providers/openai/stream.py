"""An OpenAI-compatible stream, pure: SSE bytes in, chunks and typed usage out.

Chunks are relayed as the provider sent them, but for their usage, which is taken
out as a :class:`~gateway.usage.Usage` wherever the provider puts it: OpenAI in a
final ``choices: []`` chunk (a Usage event alone: that chunk is not relayed), vLLM on
every chunk (``continuous_usage_stats``) and Groq under ``x_groq.usage`` (often also
at the top level: that one wins) on its finish chunk (the chunk with its Usage).
``"usage": null`` members (sent by many servers on every chunk) are dropped.

The stream ends at ``data: [DONE]``; a body that ends without it is whole if some
choice finished (servers that omit the marker), cut if none did.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.base import StreamEvent, UpstreamStreamError
from gateway.providers.errortext import provider_code, with_code
from gateway.sse import EventTooLarge, SSEEvent, SSEParser
from gateway.usage import from_openai

_DONE = b"[DONE]"


def _invalid_chunk() -> UpstreamStreamError:
    return UpstreamStreamError("upstream_error", "the provider sent an invalid chunk")


class OpenAIStreamTranslator:
    """OpenAI ``chat.completion.chunk`` SSE in, :data:`~gateway.providers.base.StreamEvent`
    lists out (see gateway.providers.base.StreamTranslator for the contract).

    A chunk the relay cannot read fails the stream: choices that are not a list of
    objects, a delta that is not an object (any other field may hold anything: it is
    relayed, not read). So does an error (an ``event: error`` frame, or an ``error``
    member that is not null: ``declared``), with the provider's code when it is safe.
    """

    __slots__ = ("done", "error", "parser", "saw_finish", "secret")

    def __init__(self, secret: str = "") -> None:
        self.parser = SSEParser()
        self.secret = secret  # the provider key: no error code relayed may resemble it
        self.saw_finish = False  # some choice had a finish_reason
        self.done = False
        self.error: UpstreamStreamError | None = None

    def check(self) -> None:
        """Raise the failure the input carried, if any."""
        if self.error is not None:
            raise self.error

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self.error is not None:
            raise self.error
        if self.done:
            return []
        try:
            events = self.parser.feed(data)
        except EventTooLarge as exc:  # the events before it still count
            before = self._events(exc.events)
            if self.error is None:
                self.error = UpstreamStreamError("upstream_error", f"the provider sent {exc}")
            return before
        # _events(events), inlined: this runs on every read.
        out: list[StreamEvent] = []
        for event in events:
            try:
                if self._event(event.event, event.data, out):
                    self.done = True
                    break
            except UpstreamStreamError as exc:
                self.error = exc
                break
        return out

    def close(self) -> list[StreamEvent]:
        if self.error is not None:
            raise self.error
        if self.done:
            return []
        out = self._events(self.parser.close())
        if self.error is None and not self.done:
            if self.saw_finish:
                self.done = True  # no [DONE], but the answer is whole
            else:
                self.error = UpstreamStreamError(
                    "upstream_error", "the provider stream ended early"
                )
        return out

    def _events(self, events: list[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            try:
                if self._event(event.event, event.data, out):
                    self.done = True
                    break
            except UpstreamStreamError as exc:
                self.error = exc
                break
        return out

    def _event(self, name: str | None, data: bytes, out: list[StreamEvent]) -> bool:
        """Append the event's items to ``out``; True at ``[DONE]``. Runs per chunk: plain
        loops and type() checks (any() and isinstance() cost more here)."""
        if data == _DONE:
            return True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamStreamError("upstream_error", "the provider sent invalid JSON") from exc
        if type(chunk) is not dict or name is not None or "error" in chunk:
            self._check(name, chunk)
        choices = chunk.get("choices")
        if choices is not None:
            if type(choices) is not list:
                raise _invalid_chunk()
            for choice in choices:
                if type(choice) is not dict:
                    raise _invalid_chunk()
                delta = choice.get("delta")
                if delta is not None and type(delta) is not dict:
                    raise _invalid_chunk()
                if choice.get("finish_reason"):
                    self.saw_finish = True
        usage = chunk.pop("usage", None)
        extension = chunk.get("x_groq")
        if type(extension) is dict and "usage" in extension:
            # Groq repeats (older streams: only sends) the usage here: taken out, too.
            groq_usage = extension.pop("usage")
            if usage is None:
                usage = groq_usage
        if usage is None:
            out.append(chunk)
            return False
        reported = from_openai(usage)  # None: no usage the gateway can trust
        if not choices:
            if reported is not None:  # a usage chunk: the relay re-emits its own
                out.append(reported)
        elif reported is None:
            out.append(chunk)
        else:
            out.append((chunk, reported))
        return False

    def _check(self, name: str | None, chunk: Any) -> None:
        """The uncommon chunk: raise unless it is an object and no error. An ``error``
        member that is null is no error (some compatible servers send one on every
        chunk); any other value, or an error event, ends the stream."""
        if type(chunk) is not dict:
            raise _invalid_chunk()
        if name == "error" or chunk.get("error") is not None:
            code = provider_code(chunk.get("error"), self.secret)
            raise UpstreamStreamError(
                "upstream_error", with_code("the provider reported an error", code), declared=True
            )
