"""Unit tests for gateway.sse (pure bytes, no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gateway.sse
from gateway.sse import EventTooLarge, SSEEvent, SSEParser, encode_event

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

OPENAI_TEXT = "openai_chat_text_include_usage.sse"
OPENAI_TOOL = "openai_chat_tool_call_include_usage.sse"
ANTHROPIC_TEXT = "anthropic_messages_text_cache_usage.sse"
ANTHROPIC_TOOL = "anthropic_messages_tool_use.sse"
GROQ_ERROR = "openai_compat_groq_midstream_error_event.sse"
FIXTURES = [OPENAI_TEXT, OPENAI_TOOL, ANTHROPIC_TEXT, ANTHROPIC_TOOL, GROQ_ERROR]


def _load(name: str) -> bytes:
    return (DATA_DIR / name).read_bytes()


def _parse_whole(raw: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    return parser.feed(raw) + parser.close()


def _parse_chunks(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def _reference(raw: bytes) -> list[tuple[str | None, bytes]]:
    """Deliberately naive reference: normalise newlines, split on blank lines."""
    text = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    out: list[tuple[str | None, bytes]] = []
    for block in text.split(b"\n\n"):
        event: str | None = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value.decode() or None
            elif name == b"data":
                data.append(value)
        if data:
            out.append((event, b"\n".join(data)))
    return out


def _pairs(events: list[SSEEvent]) -> list[tuple[str | None, bytes]]:
    return [(e.event, e.data) for e in events]


# --- whole fixtures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "first_event", "first_prefix", "last_event", "last_prefix"),
    [
        (OPENAI_TEXT, 12, None, b'{"id":"chatcmpl-Dx0Xq5Xx9rHB2ehcHZCRDsnuymUXc"', None, b"[DONE]"),
        (OPENAI_TOOL, 9, None, b'{"id":"chatcmpl-Dx0XpqH8w09uBXwq1zFGYdETjtnEl"', None, b"[DONE]"),
        (
            ANTHROPIC_TEXT,
            7,
            "message_start",
            b'{"type":"message_start","message":{"model":"claude-sonnet-4-5-20250929",',
            "message_stop",
            b'{"type":"message_stop"    }',
        ),
        (
            ANTHROPIC_TOOL,
            15,
            "message_start",
            b'{"type":"message_start","message":{"id":"msg_019Q1hrJbZG26Fb9BQhrkHEr",',
            "message_stop",
            b'{"type":"message_stop"}',
        ),
        (
            GROQ_ERROR,
            95,
            None,
            b'{"id":"chatcmpl-4f39f3af-3267-4ac1-a0cf-6aa7451877dc",',
            "error",
            b'{"error":{"message":"Tool call validation failed: ',
        ),
    ],
)
def test_fixture_whole(
    name: str,
    count: int,
    first_event: str | None,
    first_prefix: bytes,
    last_event: str | None,
    last_prefix: bytes,
) -> None:
    events = _parse_whole(_load(name))
    assert len(events) == count
    assert events[0].event == first_event
    assert events[0].data.startswith(first_prefix)
    assert events[-1].event == last_event
    assert events[-1].data.startswith(last_prefix)
    assert all(e.id is None for e in events)
    assert all(b"\n" not in e.data for e in events)  # every fixture frame is a single data line
    if last_prefix in (b"[DONE]", b'{"type":"message_stop"}', b'{"type":"message_stop"    }'):
        assert events[-1].data == last_prefix
    for event in events:
        if event.data != b"[DONE]":
            json.loads(event.data)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_reference(name: str) -> None:
    raw = _load(name)
    assert _pairs(_parse_whole(raw)) == _reference(raw)


def test_anthropic_event_sequence() -> None:
    events = _parse_whole(_load(ANTHROPIC_TEXT))
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for event in events:
        assert json.loads(event.data)["type"] == event.event


def test_openai_text_content() -> None:
    events = _parse_whole(_load(OPENAI_TEXT))
    chunks = [json.loads(e.data) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "The capital of the UK is London."
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 87


# --- chunk boundaries -------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_every_two_way_split_matches_whole(name: str) -> None:
    raw = _load(name)
    expected = _parse_whole(raw)
    for i in range(len(raw) + 1):
        assert _parse_chunks([raw[:i], raw[i:]]) == expected, f"split at byte {i}"


@pytest.mark.parametrize("name", FIXTURES)
def test_byte_at_a_time_matches_whole(name: str) -> None:
    raw = _load(name)
    assert _parse_chunks([raw[i : i + 1] for i in range(len(raw))]) == _parse_whole(raw)


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
@pytest.mark.parametrize("name", FIXTURES)
def test_line_ending_variants(name: str, ending: bytes) -> None:
    lf = _load(name)
    raw = lf.replace(b"\n", ending)
    expected = _parse_whole(lf)
    assert _parse_whole(raw) == expected
    assert _parse_chunks([raw[i : i + 1] for i in range(len(raw))]) == expected
    step = 1 if len(raw) < 5000 else 7  # keep the big fixture quick
    for i in range(0, len(raw) + 1, step):
        assert _parse_chunks([raw[:i], raw[i:]]) == expected, f"split at byte {i}"


def test_crlf_split_across_feeds_is_one_line_ending() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # If the LF were a second line ending it would dispatch "a" on its own.
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r") == [SSEEvent(None, b"a\nb")]  # blank line
    assert parser.feed(b"\n") == []  # second half of that CRLF, not another blank line
    assert parser.feed(b"data: c\n\n") == [SSEEvent(None, b"c")]
    assert parser.close() == []


def test_cr_then_cr_across_feeds_is_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\rdata: b\r\r") == [SSEEvent(None, b"a"), SSEEvent(None, b"b")]


def test_lone_cr_and_crlf_endings() -> None:
    assert _parse_whole(b"event: x\rdata: 1\rdata: 2\r\r") == [SSEEvent("x", b"1\n2")]
    assert _parse_whole(b"event: x\r\ndata: 1\r\ndata: 2\r\n\r\n") == [SSEEvent("x", b"1\n2")]
    mixed = b"data: a\r\n\rdata: b\n\r\n"
    assert _parse_whole(mixed) == [SSEEvent(None, b"a"), SSEEvent(None, b"b")]


# --- field rules ------------------------------------------------------------------------------


def test_comments_ignored() -> None:
    raw = b": ping\n\n:\ndata: x\n: mid-event comment\n\n: trailing\n"
    assert _parse_whole(raw) == [SSEEvent(None, b"x")]


def test_multiline_data_joined_with_lf() -> None:
    assert _parse_whole(b"data: a\ndata:\ndata: c\n\n") == [SSEEvent(None, b"a\n\nc")]


def test_event_names_and_reset_between_events() -> None:
    raw = b"event: first\ndata: 1\n\ndata: 2\n\nevent: a\nevent: b\ndata: 3\n\nevent:\ndata: 4\n\n"
    assert _parse_whole(raw) == [
        SSEEvent("first", b"1"),
        SSEEvent(None, b"2"),
        SSEEvent("b", b"3"),
        SSEEvent(None, b"4"),
    ]


def test_event_without_data_is_not_dispatched() -> None:
    raw = b"event: lonely\n\ndata: x\n\n"
    assert _parse_whole(raw) == [SSEEvent(None, b"x")]
    parser = SSEParser()
    assert parser.feed(b"event: lonely\n") == []
    assert parser.close() == []


def test_id_field_persists_until_changed() -> None:
    raw = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid: bad\x00\ndata: d\n\nid\ndata: e\n\n"
    assert _parse_whole(raw) == [
        SSEEvent(None, b"a", "1"),
        SSEEvent(None, b"b", "1"),
        SSEEvent(None, b"c", "2"),
        SSEEvent(None, b"d", "2"),
        SSEEvent(None, b"e", None),
    ]


def test_colon_space_handling() -> None:
    raw = b"data:nospace\n\ndata:  two spaces\n\ndata: a: b\n\nevent:x\ndata:\n\n"
    assert _parse_whole(raw) == [
        SSEEvent(None, b"nospace"),
        SSEEvent(None, b" two spaces"),
        SSEEvent(None, b"a: b"),
        SSEEvent("x", b""),
    ]


def test_field_without_colon() -> None:
    assert _parse_whole(b"data\n\n") == [SSEEvent(None, b"")]
    assert _parse_whole(b"data\ndata\n\n") == [SSEEvent(None, b"\n")]
    assert _parse_whole(b"event\ndata: x\n\n") == [SSEEvent(None, b"x")]


def test_retry_and_unknown_fields_ignored() -> None:
    raw = b"retry: 1000\nfoo: bar\nDATA: no\ndata: yes\nbaz\n\nretry: 5\n\n"
    assert _parse_whole(raw) == [SSEEvent(None, b"yes")]


def test_bom_skipped_only_at_start() -> None:
    bom = b"\xef\xbb\xbf"
    assert _parse_whole(bom + b"data: x\n\n") == [SSEEvent(None, b"x")]
    assert _parse_chunks([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [SSEEvent(None, b"x")]
    # A second BOM is part of the field name, making it an unknown field.
    assert _parse_whole(bom + bom + b"data: x\n\ndata: y\n\n") == [SSEEvent(None, b"y")]
    # Something that merely starts like a BOM is kept.
    assert _parse_chunks([b"\xef", b"data: x\n\ndata: y\n\n"]) == [SSEEvent(None, b"y")]


def test_unicode_event_name_and_data_bytes_untouched() -> None:
    raw = "event: caf\u00e9\ndata: \u00fcber \U0001f600\n\n".encode()
    assert _parse_whole(raw) == [SSEEvent("caf\u00e9", "\u00fcber \U0001f600".encode())]


# --- end of input -----------------------------------------------------------------------------


def test_anthropic_tool_use_final_event_needs_close() -> None:
    raw = _load(ANTHROPIC_TOOL)
    assert not raw.endswith(b"\n")
    parser = SSEParser()
    fed = parser.feed(raw)
    assert len(fed) == 14
    assert fed[-1].event == "message_delta"
    assert all(e.event != "message_stop" for e in fed)
    assert parser.close() == [SSEEvent("message_stop", b'{"type":"message_stop"}')]
    assert parser.close() == []


def test_close_with_pending_data_lines() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: e\ndata: a\ndata: b\n") == []
    assert parser.close() == [SSEEvent("e", b"a\nb")]


def test_close_with_nothing_pending() -> None:
    parser = SSEParser()
    assert parser.close() == []
    assert parser.feed(b"data: x\n\n") == [SSEEvent(None, b"x")]
    assert parser.close() == []


def test_parser_reusable_after_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 7\nevent: e\ndata: partial") == []
    assert parser.close() == [SSEEvent("e", b"partial", "7")]
    assert parser.feed(b"\xef\xbb\xbfdata: fresh\n\n") == [SSEEvent(None, b"fresh")]


def test_groq_midstream_error_frame() -> None:
    events = _parse_whole(_load(GROQ_ERROR))
    assert [e.event for e in events].count("error") == 1
    error = events[-1]
    assert error.event == "error"
    payload = json.loads(error.data)
    assert "error" in payload
    assert payload["error"]["code"] == "tool_use_failed"
    assert payload["error"]["status_code"] == 400
    assert all(e.data != b"[DONE]" for e in events)
    assert all("choices" in json.loads(e.data) for e in events[:-1])


# --- encoding ---------------------------------------------------------------------------------


def test_encode_event_exact_bytes() -> None:
    assert encode_event(b"[DONE]") == b"data: [DONE]\n\n"
    assert encode_event(b"{}", "ping") == b"event: ping\ndata: {}\n\n"
    assert encode_event(b"a\nb", "e") == b"event: e\ndata: a\ndata: b\n\n"
    assert encode_event(b"") == b"data: \n\n"


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (b"hello", None),
        (b"", None),
        (b"\n", "e"),
        (b"line1\nline2\n\nline4", "message_delta"),
        (b" leading space", "x:y"),
        (b"ends with newline\n", None),
        (b": looks like a comment", "error"),
        ("\u00fcnicode \U0001f600".encode(), "caf\u00e9"),
    ],
)
def test_encode_event_round_trip(data: bytes, event: str | None) -> None:
    encoded = encode_event(data, event)
    assert _parse_whole(encoded) == [SSEEvent(event, data)]
    assert _parse_chunks([encoded[i : i + 1] for i in range(len(encoded))]) == [
        SSEEvent(event, data)
    ]


@pytest.mark.parametrize("name", FIXTURES)
def test_reencoded_fixture_round_trips(name: str) -> None:
    events = _parse_whole(_load(name))
    reencoded = b"".join(encode_event(e.data, e.event) for e in events)
    assert _parse_whole(reencoded) == events


def test_encode_event_rejects_unrepresentable_input() -> None:
    with pytest.raises(ValueError, match="CR"):
        encode_event(b"a\rb")
    with pytest.raises(ValueError, match="event name"):
        encode_event(b"x", "a\nb")


# --- speed ------------------------------------------------------------------------------------


def test_an_event_begun_in_one_feed_is_finished_by_the_next() -> None:
    """Whole "data: " events are taken as they are only when no line of an unfinished
    event came before them: here the second feed's first line belongs to the first's."""
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"data: b\n\ndata: c\n\n") == [SSEEvent(None, b"a\nb"), SSEEvent(None, b"c")]
    assert parser.feed(b"event: named\n") == []
    assert parser.feed(b"data: d\n\n") == [SSEEvent("named", b"d")]
    assert parser.feed(b"id: 7\n\ndata: e\n\n\n\ndata: f\n\n") == [
        SSEEvent(None, b"e", "7"),
        SSEEvent(None, b"f", "7"),
    ]


# --- size cap ---------------------------------------------------------------------------------

CAP = 1024  # MAX_EVENT_BYTES, lowered for these tests


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.sse, "MAX_EVENT_BYTES", CAP)


def feed_until_refused(parser: SSEParser, piece: bytes) -> tuple[int, EventTooLarge]:
    """Feed ``piece`` again and again until the parser refuses: the bytes fed by then."""
    fed = 0
    while fed <= 100 * CAP:
        fed += len(piece)
        try:
            parser.feed(piece)
        except EventTooLarge as exc:
            return fed, exc
    raise AssertionError("never refused")


def test_the_default_cap_is_a_few_mib() -> None:
    assert gateway.sse.MAX_EVENT_BYTES == 4 * 1024 * 1024


@pytest.mark.usefixtures("small_cap")
def test_an_endless_line_is_refused_once_over_the_cap() -> None:
    """Fed in pieces with no line end: refused as soon as it is over the cap, rather
    than buffered for as long as the upstream keeps sending."""
    parser = SSEParser()
    assert parser.feed(b"data: ok\n\ndata: ") == [SSEEvent(None, b"ok")]
    fed, refused = feed_until_refused(parser, b"a" * 100)
    assert CAP < 6 + fed <= CAP + 100
    assert refused.events == []
    # The parser let go of what it held, and can start over.
    assert parser.feed(b"data: next\n\n") == [SSEEvent(None, b"next")]


@pytest.mark.usefixtures("small_cap")
def test_data_lines_without_the_blank_line_are_refused_once_over_the_cap() -> None:
    parser = SSEParser()
    fed, _ = feed_until_refused(parser, b"data: " + b"a" * 100 + b"\n")
    assert fed <= 2 * CAP


@pytest.mark.usefixtures("small_cap")
def test_empty_data_lines_count_as_received() -> None:
    """An event is measured as received: endless empty data lines (each kept as one)
    are refused too."""
    fed, _ = feed_until_refused(SSEParser(), b"data:\n")
    assert fed <= CAP + 6


@pytest.mark.usefixtures("small_cap")
def test_events_completed_before_the_overflow_come_with_it() -> None:
    parser = SSEParser()
    with pytest.raises(EventTooLarge) as info:
        parser.feed(b"data: 1\n\nevent: x\ndata: 2\n\ndata: " + b"a" * 2 * CAP)
    assert info.value.events == [SSEEvent(None, b"1"), SSEEvent("x", b"2")]


@pytest.mark.usefixtures("small_cap")
def test_events_up_to_the_cap_are_parsed_in_any_split() -> None:
    """The cap counts one event at a time: events under it pass however they are split,
    as many as come."""
    data = b"x" * (CAP - 40)  # its two data lines, as received, are just under the cap
    raw = (b"event: e\ndata: " + data[:500] + b"\ndata: " + data[500:] + b"\n\n") * 5
    joined = data[:500] + b"\n" + data[500:]
    expected = [SSEEvent("e", joined)] * 5
    assert _parse_whole(raw) == expected
    assert _parse_chunks([raw[i : i + 7] for i in range(0, len(raw), 7)]) == expected
    assert _parse_chunks([raw[i : i + 300] for i in range(0, len(raw), 300)]) == expected
