"""Anthropic Messages passed through natively, pure: a Messages call routed to an
Anthropic upstream goes up in its own format and its answer comes back in it.

    rewrite_request(body, upstream_model, max_tokens)   the client's body, for upstream
    NativeMessagesStream(message_id, alias)             upstream SSE bytes -> bytes to
                                                        relay + meter signals (NativeOut)
    native_unary(message, message_id, alias)            upstream Message -> client's, Usage
    message_usage(usage)                                Anthropic usage -> Usage, 1h writes

Only the model, the id and the output ceiling change: prompt-caching marks, signed
thinking blocks, ``top_k``, betas and every block type the upstream sends survive.
Usage is Anthropic's, typed: ``input_tokens`` counts every input token (uncached +
cache writes + cache reads), ``cached_input_tokens`` the reads and
``cache_creation_input_tokens`` the writes, of which ``cache_write_1h_tokens`` were
written with the 1-hour TTL (priced apart from the 5-minute ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.providers.base import UpstreamStreamError
from gateway.providers.errortext import provider_code, with_code
from gateway.sse import EventTooLarge, SSEEvent, SSEParser, encode_event
from gateway.usage import MAX_REPORTED_TOKENS, Usage

__all__ = [
    "NativeMessagesStream",
    "NativeOut",
    "message_usage",
    "native_unary",
    "rewrite_request",
]

# Content deltas whose string member is generated output (signature_delta is not: it
# signs the thinking, and citations_delta quotes the prompt).
_DELTA_TEXT = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}
# Events the answer has not begun with: held back until something else comes, so that
# an error right after message_start (Anthropic's usual "overloaded") has written
# nothing to the client and the gateway may still retry or fall back.
_PREAMBLE = frozenset({"message_start", "ping"})
_STOP_EVENT = encode_event(b'{"type":"message_stop"}', "message_stop")
# Anthropic's input counts: each is part of the Usage's input_tokens.
_INPUT_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_TTL_KEYS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


@dataclass(slots=True)
class NativeOut:
    """What one ``feed`` / ``close`` of a native stream gives the relay.

    ``data``: the bytes to write to the client (maybe none). ``deltas``: events in this
    call that carried generated output (each one token at least: the meter's floor).
    ``finished``: the answer finished (this call or earlier: Anthropic's stop_reason,
    Responses' completed / incomplete). ``done``: the stream ended as it should; nothing
    after it is read. ``usage``: the upstream's counts so far (None: none, or none the
    gateway can trust); ``usage_final``: they are the finish's counts (report them to the
    meter once ``finished``), else a running count (a floor: the output count of
    ``message_start`` is a placeholder). ``cache_write_1h_tokens``: the part of
    ``usage.cache_creation_input_tokens`` written with the 1-hour TTL. ``error``: the
    stream failed after ``data`` (also kept on the stream, and raised by its next call).
    """

    data: bytes = b""
    deltas: int = 0
    finished: bool = False
    done: bool = False
    usage: Usage | None = None
    usage_final: bool = False
    cache_write_1h_tokens: int = 0
    error: UpstreamStreamError | None = None


def rewrite_request(
    body: Mapping[str, Any], upstream_model: str, max_tokens: int
) -> dict[str, Any]:
    """The client's Messages body (validated by gateway.surfaces.messages.parse_request)
    for the upstream: ``model`` the route's, ``max_tokens`` the clamped ceiling, every
    other member as it came (a shallow copy: nested values are shared, the input is not
    changed). Anthropic reports usage unasked: nothing else to request."""
    out = dict(body)
    out["model"] = upstream_model
    out["max_tokens"] = max_tokens
    return out


def _count(value: Any) -> int | None:
    """A token count: an int (not a bool) in [0, MAX_REPORTED_TOKENS], else None."""
    if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


class _Counts:
    """Anthropic's usage counts as they came, each the highest seen (they are cumulative;
    a lower later value never lowers the bill). Untrustworthy once any count was of the
    wrong type or out of range: the caller then estimates, never below the truth."""

    __slots__ = ("bad", "counts", "ttl")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.ttl: dict[str, int] = {}
        self.bad = False

    def merge(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            self.bad = True
            return
        for key in (*_INPUT_KEYS, "output_tokens"):
            self._take(self.counts, key, usage.get(key))
        ttl = usage.get("cache_creation")
        if isinstance(ttl, dict):
            for key in _TTL_KEYS:
                self._take(self.ttl, key, ttl.get(key))
        elif ttl is not None:
            self.bad = True
        details = usage.get("output_tokens_details")
        if isinstance(details, dict):
            # Newer models split the thinking out (within output_tokens): informational.
            self._take(self.counts, "thinking_tokens", details.get("thinking_tokens"))
        iterations = usage.get("iterations")
        if isinstance(iterations, list):
            self._iterations(iterations)

    def _iterations(self, iterations: list[Any]) -> None:
        """Server-side rounds (compaction, advisor calls) count each apart and the
        top-level counts leave some out: each count is at least their sum."""
        sums: dict[str, int] = {}
        ttl_sums: dict[str, int] = {}
        for round_ in iterations:
            if not isinstance(round_, dict):
                continue
            for key in (*_INPUT_KEYS, "output_tokens"):
                self._add(sums, key, round_.get(key))
            ttl = round_.get("cache_creation")
            if isinstance(ttl, dict):
                for key in _TTL_KEYS:
                    self._add(ttl_sums, key, ttl.get(key))
        for key, total in sums.items():
            self._take(self.counts, key, min(total, MAX_REPORTED_TOKENS + 1))
        for key, total in ttl_sums.items():
            self._take(self.ttl, key, min(total, MAX_REPORTED_TOKENS + 1))

    def _add(self, into: dict[str, int], key: str, value: Any) -> None:
        if value is None:
            return
        count = _count(value)
        if count is None:
            self.bad = True
        else:
            into[key] = into.get(key, 0) + count

    def _take(self, into: dict[str, int], key: str, value: Any) -> None:
        if value is None:
            return  # absent (older models send no cache counts; message_delta few)
        count = _count(value)
        if count is None:
            self.bad = True
        elif count > into.get(key, -1):
            into[key] = count

    def usage(self) -> tuple[Usage, int] | None:
        counts = self.counts
        if self.bad or "input_tokens" not in counts or "output_tokens" not in counts:
            return None
        one_hour = self.ttl.get("ephemeral_1h_input_tokens", 0)
        # The TTL split never says less was written than its parts.
        written = max(
            counts.get("cache_creation_input_tokens", 0),
            one_hour + self.ttl.get("ephemeral_5m_input_tokens", 0),
        )
        read = counts.get("cache_read_input_tokens", 0)
        total_input = counts["input_tokens"] + read + written
        output = counts["output_tokens"]
        if total_input > MAX_REPORTED_TOKENS:
            return None
        usage = Usage(
            input_tokens=total_input,
            output_tokens=output,
            cached_input_tokens=read,
            reasoning_tokens=min(counts.get("thinking_tokens", 0), output),
            cache_creation_input_tokens=written,
        )
        return usage, one_hour


def message_usage(usage: Any) -> tuple[Usage, int] | None:
    """An Anthropic ``usage`` object as the gateway's Usage and the cache writes made
    with the 1-hour TTL; None when absent or untrustworthy (input_tokens and
    output_tokens missing, or any count not an integer in [0, 10**12])."""
    counts = _Counts()
    if not isinstance(usage, dict):
        return None
    counts.merge(usage)
    return counts.usage()


def native_unary(message: Any, message_id: str, alias: str) -> tuple[dict[str, Any], Usage | None]:
    """An upstream Messages answer for the client: ``id`` the gateway's, ``model`` the
    alias, the rest as it came (a copy); and its Usage (None: none usable; the 1-hour
    writes: :func:`message_usage`). ValueError if it is no Message object."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise ValueError("not an Anthropic message")
    out = dict(message)
    out["id"] = message_id
    out["model"] = alias
    found = message_usage(message.get("usage"))
    return out, None if found is None else found[0]


def _invalid(what: str) -> UpstreamStreamError:
    return UpstreamStreamError("upstream_error", f"the provider sent {what}")


def _member(data: dict[str, Any], name: str) -> dict[str, Any]:
    """An event's object member ({} when absent); any other type fails the stream."""
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"an invalid {name}")
    return value


def _generated(data: dict[str, Any], kind: str) -> bool:
    """Whether a content event carries generated output."""
    if kind == "content_block_delta":
        delta = _member(data, "delta")
        member = _DELTA_TEXT.get(str(delta.get("type")))
        value = delta.get(member) if member else None
        return isinstance(value, str) and bool(value)
    block = _member(data, "content_block")  # content_block_start
    block_type = block.get("type")
    if block_type in ("tool_use", "redacted_thinking"):
        return True  # a tool's name (its input may come whole here), encrypted reasoning
    value = block.get(block_type) if block_type in ("text", "thinking") else None
    return isinstance(value, str) and bool(value)


class NativeSSEStream:
    """What both native streams share: SSE bytes in any splits to ``feed``, ``close`` at
    the end of the body, a NativeOut from each; a failure kept in ``error`` (the bytes
    before it still out) and raised by ``check()`` and any later call. Subclasses give
    ``_event`` (one event relayed, 1 if it carried generated output), ``_out`` and
    ``_ended`` (what a body that ended without the stream's end marker means)."""

    parser: SSEParser
    done: bool
    error: UpstreamStreamError | None

    def check(self) -> None:
        """Raise the failure the input carried, if any."""
        if self.error is not None:
            raise self.error

    def feed(self, data: bytes) -> NativeOut:
        self.check()
        if self.done:
            return self._out([], 0)
        try:
            events = self.parser.feed(data)
        except EventTooLarge as exc:  # the events before it still count
            out, deltas = self._events(exc.events)
            if self.error is None:
                self.error = _invalid(str(exc))
            return self._out(out, deltas)
        return self._out(*self._events(events))

    def close(self) -> NativeOut:
        self.check()
        if self.done:
            return self._out([], 0)
        out, deltas = self._events(self.parser.close())
        if self.error is None and not self.done:
            self._ended(out)
        return self._out(out, deltas)

    def _ended(self, out: list[bytes]) -> None:
        self.error = UpstreamStreamError("upstream_error", "the provider stream ended early")

    def _events(self, events: list[SSEEvent]) -> tuple[list[bytes], int]:
        """Each event relayed into the bytes out until the end or a failure (kept in
        ``error``); the count of generated-output events."""
        out: list[bytes] = []
        deltas = 0
        for event in events:
            if self.done:
                break
            try:
                deltas += self._event(event, out)
            except UpstreamStreamError as exc:
                self.error = exc
                break
        return out, deltas

    def _event(self, event: SSEEvent, out: list[bytes]) -> int:
        raise NotImplementedError

    def _out(self, out: list[bytes], deltas: int) -> NativeOut:
        raise NotImplementedError


class NativeMessagesStream(NativeSSEStream):
    """An Anthropic Messages stream relayed as it is (pure, incremental): upstream SSE
    bytes in any splits to ``feed``, ``close`` at the end of the body; each returns a
    :class:`NativeOut`.

    Each event is relayed with its data as received, but ``message_start``, whose
    ``message.id`` becomes ``message_id`` and ``message.model`` the ``alias``
    (re-serialized). ``message_start`` and the pings before the first other event are
    held back and sent with it. An ``error`` event (``declared``), invalid JSON, an
    event of the wrong shape or one over gateway.sse.MAX_EVENT_BYTES fails the stream:
    it is not relayed (the gateway writes its own error event; the provider's text never
    reaches the client), the bytes before it are, and the failure is ``error`` on the
    NativeOut and on the stream, raised by ``check()`` and by any later call. A stream
    that ends before its stop_reason was cut (``close`` fails it); one that ends after
    it without ``message_stop`` is whole, and ``close`` adds the ``message_stop``.
    """

    def __init__(self, message_id: str, alias: str, secret: str = "") -> None:
        self.message_id = message_id
        self.alias = alias
        self.secret = secret  # the provider key: no error code relayed may resemble it
        self.parser = SSEParser()
        self.begun = False  # bytes of the answer went out (nothing is retried after that)
        self.finished = False
        self.done = False
        self.error: UpstreamStreamError | None = None
        self._held: list[bytes] = []
        self._counts = _Counts()
        self._final = False  # a message_delta carried the output count

    def _ended(self, out: list[bytes]) -> None:
        if self.finished:  # whole but for its message_stop: added
            self.done = True
            out.append(_STOP_EVENT)
        else:
            super()._ended(out)

    def _out(self, out: list[bytes], deltas: int) -> NativeOut:
        found = self._counts.usage()
        return NativeOut(
            data=b"".join(out),
            deltas=deltas,
            finished=self.finished,
            done=self.done,
            usage=None if found is None else found[0],
            usage_final=found is not None and self._final,
            cache_write_1h_tokens=0 if found is None else found[1],
            error=self.error,
        )

    def _event(self, event: SSEEvent, out: list[bytes]) -> int:
        """Relay one event into ``out``; the number of generated-output events (0 or 1)."""
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise _invalid("invalid JSON") from exc
        if not isinstance(data, dict):
            raise _invalid("an invalid event")
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = event.event or ""
        if kind == "error" or event.event == "error":
            code = provider_code(data.get("error"), self.secret)
            raise UpstreamStreamError(
                "upstream_error", with_code("the provider reported an error", code), declared=True
            )
        payload = event.data
        generated = 0
        if kind == "message_start":
            message = _member(data, "message")
            self._counts.merge(message.get("usage"))
            data["message"] = {**message, "id": self.message_id, "model": self.alias}
            payload = orjson.dumps(data)
        elif kind in ("content_block_start", "content_block_delta"):
            generated = int(_generated(data, kind))
        elif kind == "message_delta":
            usage = data.get("usage")
            self._counts.merge(usage)
            if isinstance(usage, dict) and usage.get("output_tokens") is not None:
                self._final = True
            if _member(data, "delta").get("stop_reason"):
                self.finished = True
        elif kind == "message_stop":
            if not self.finished:
                raise UpstreamStreamError("upstream_error", "the provider stream ended early")
            self.done = True
        # Clients (the anthropic SDK) skip events without a name: name it by its type.
        encoded = encode_event(payload, event.event or kind or None)
        if self.begun:
            out.append(encoded)
        elif kind in _PREAMBLE:
            self._held.append(encoded)
        else:
            self.begun = True
            out.extend(self._held)
            self._held.clear()
            out.append(encoded)
        return generated
