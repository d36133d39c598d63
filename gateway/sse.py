"""Pure server-sent events (``text/event-stream``) parsing and encoding.

No I/O here: :class:`SSEParser` turns byte chunks into :class:`SSEEvent` values,
:func:`encode_event` turns an event back into bytes. An event (or an unfinished line)
over :data:`MAX_EVENT_BYTES` raises :class:`EventTooLarge`: what an upstream sends is
never buffered without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_EVENT_BYTES", "EventTooLarge", "SSEEvent", "SSEParser", "encode_event"]

_BOM = b"\xef\xbb\xbf"
_COLON = 0x3A  # b":"[0]
_LF = 0x0A  # b"\n"[0]

# The most one event may hold, counted as received (its data lines, plus the line still
# being received): an upstream sending one endless line, or data lines without the blank
# line that ends an event, must not grow the gateway's memory without bound. Chat chunks
# are small (a few tokens; the largest, a tool call's complete input or a final chunk
# with annotations, are kilobytes); 4 MiB leaves room for base64 media in one event and
# bounds a stream's parser at a few MiB. Checked once per fed chunk, so an event may
# overshoot it by the size of that chunk.
MAX_EVENT_BYTES = 4 * 1024 * 1024


# Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, which made building an event 2.5x slower (one per stream chunk).
@dataclass(slots=True)
class SSEEvent:
    """One dispatched event (treat it as a value: nothing here changes one).

    ``event`` is the last ``event:`` value (``None`` when absent or empty, i.e. the
    default "message" type); ``data`` is the ``data:`` lines joined with ``b"\\n"``;
    ``id`` is the last event ID in effect (it persists across events, per spec;
    ``None`` when never set or reset by an empty ``id:``).
    """

    event: str | None
    data: bytes
    id: str | None = None


class EventTooLarge(ValueError):
    """An event, or an unfinished line, grew over :data:`MAX_EVENT_BYTES`.

    ``events`` are the events the same :meth:`SSEParser.feed` call completed before that
    (they came first, and are still valid). The parser is reset, its buffers dropped.
    """

    def __init__(self, events: list[SSEEvent]) -> None:
        super().__init__(f"an SSE event over {MAX_EVENT_BYTES} bytes")
        self.events = events


class SSEParser:
    """Incremental parser following the WHATWG event-stream rules.

    Lines may end in CRLF, LF or a lone CR (a CRLF split across two chunks is one
    line ending). Comments, ``retry`` and unknown fields are ignored; a UTF-8 BOM at
    the very start of the stream is skipped. Unlike the spec, :meth:`close`
    dispatches a final event that lacks its terminating blank line, and an event over
    :data:`MAX_EVENT_BYTES` raises :class:`EventTooLarge`.
    """

    __slots__ = (
        "_bom_head",
        "_data",
        "_data_size",
        "_event",
        "_last_id",
        "_skip_lf",
        "_tail",
        "_tail_size",
    )

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # pieces of the incomplete last line
        self._tail_size = 0  # their length
        self._skip_lf = False  # previous chunk ended in CR: drop a leading LF
        self._bom_head: bytes | None = b""  # bytes seen before the BOM check; None once done
        self._data: list[bytes] = []
        self._data_size = 0  # bytes of the data lines in _data, as received
        self._event: str | None = None
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed (possibly none).

        Raises EventTooLarge when the unfinished event grew over MAX_EVENT_BYTES."""
        if self._bom_head is not None:
            head = self._bom_head + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._bom_head = head  # could still become a BOM: wait for more
                return []
            self._bom_head = None
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        has_cr = b"\r" in chunk
        if not has_cr and b"\n" not in chunk:
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            if self._tail_size + self._data_size > MAX_EVENT_BYTES:
                raise self._too_large([])
            return []
        if self._tail:
            self._tail.append(chunk)
            chunk = b"".join(self._tail)
            self._tail.clear()
        if has_cr:
            self._skip_lf = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Whole events first: the text up to each blank line. The lines of
        # "a\n\nb" are a's lines, an empty line, then b's, so each piece is its own
        # lines plus a blank one. Most events are one "data: " line, and are taken
        # as they are; anything else goes line by line.
        pieces = chunk.split(b"\n\n")
        last = pieces.pop()
        events: list[SSEEvent] = []
        for piece in pieces:
            if (
                piece[:6] == b"data: "
                and b"\n" not in piece
                and not self._data  # no lines of an unfinished event before this piece
                and self._event is None
            ):
                events.append(SSEEvent(None, piece[6:], self._last_id))
                continue
            piece_lines = piece.split(b"\n")
            piece_lines.append(b"")
            events += self._process(piece_lines)
        lines = last.split(b"\n")
        rest = lines.pop()
        held = self._tail_size = len(rest)
        if held:
            self._tail.append(rest)
        if lines:
            events += self._process(lines)
        if held + self._data_size > MAX_EVENT_BYTES:
            raise self._too_large(events)
        return events

    def _too_large(self, events: list[SSEEvent]) -> EventTooLarge:
        """The failure for an event over the cap; the parser drops what it holds."""
        self._reset()
        return EventTooLarge(events)

    def close(self) -> list[SSEEvent]:
        """Signal end of input; return the last event if it had data but no blank line.

        The parser is reset afterwards and can be reused for a new stream.
        """
        lines: list[bytes] = []
        if self._bom_head:  # an incomplete BOM prefix is ordinary content
            lines.append(self._bom_head)
        if self._tail:
            lines.append(b"".join(self._tail))
        if lines:
            lines = [b"".join(lines)]
        lines.append(b"")  # treat end of input as a final blank line
        events = self._process(lines)
        self._reset()
        return events

    def _reset(self) -> None:
        self._tail.clear()
        self._tail_size = 0
        self._skip_lf = False
        self._bom_head = b""
        self._data = []
        self._data_size = 0
        self._event = None
        self._last_id = None

    def _process(self, lines: list[bytes]) -> list[SSEEvent]:
        """Apply complete lines (without terminators) to the parser state."""
        events: list[SSEEvent] = []
        data = self._data
        size = self._data_size
        for line in lines:
            if not line:  # blank line: dispatch
                if data:
                    events.append(SSEEvent(self._event, b"\n".join(data), self._last_id))
                    data = self._data = []
                    size = 0
                self._event = None
                continue
            if line[0] == _COLON:  # comment
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                data.append(value)
                size += len(line) + 1  # as received: an empty data line counts too
            elif field == b"event":
                self._event = value.decode("utf-8", "replace") or None
            elif field == b"id" and b"\x00" not in value:  # ids containing NUL are ignored
                self._last_id = value.decode("utf-8", "replace") or None
            # "retry" and unknown fields are ignored.
        self._data_size = size
        return events


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """Encode one event: optional ``event:`` line, one ``data:`` line per line of ``data``.

    Raises ValueError if ``data`` contains CR or ``event`` contains CR/LF, which the
    format cannot carry.
    """
    if b"\r" in data:
        raise ValueError("SSE data cannot contain CR")
    body = b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"
    if not event:
        return body
    if "\n" in event or "\r" in event:
        raise ValueError("SSE event name cannot contain CR or LF")
    return b"event: " + event.encode() + b"\n" + body
