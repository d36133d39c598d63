"""Anthropic Messages passed through natively (gateway.surfaces.native_messages): the
request rewrite, the stream relay on real recordings (tests/data, NATIVE_SOURCES.md and
README.md) in random byte splits, its meter signals, the scripted edge cases, and the
unary answer."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.providers.base import UpstreamStreamError
from gateway.sse import MAX_EVENT_BYTES, SSEParser, encode_event
from gateway.surfaces.messages import parse_request
from gateway.surfaces.native_messages import (
    NativeMessagesStream,
    NativeOut,
    message_usage,
    native_unary,
    rewrite_request,
)
from gateway.usage import Usage

DATA = Path(__file__).resolve().parent.parent / "data"
GATEWAY_ID = "msg_gateway0001"
ALIAS = "claude-alias"
Event = tuple[str | None, Any]


def parse(data: bytes) -> list[Event]:
    """The events of SSE bytes: (event name, JSON data)."""
    parser = SSEParser()
    return [(e.event, orjson.loads(e.data)) for e in parser.feed(data) + parser.close()]


def expected_relay(raw: bytes) -> list[Event]:
    """What the client must get for an upstream body: every event as it came (named by
    its type), but message_start's id and model; a message_stop when it lacked one."""
    out: list[Event] = []
    for name, data in parse(raw):
        if data.get("type") == "message_start":
            data = copy.deepcopy(data)
            data["message"]["id"] = GATEWAY_ID
            data["message"]["model"] = ALIAS
        out.append((name or data["type"], data))
    if out[-1][1]["type"] != "message_stop":
        out.append(("message_stop", {"type": "message_stop"}))
    return out


class Run:
    """A whole body fed to one stream: the bytes relayed and the signals summed."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.stream = NativeMessagesStream(GATEWAY_ID, ALIAS, secret="sk-ant-secretkey123")
        self.outs: list[NativeOut] = []
        for piece in pieces:
            self.outs.append(self.stream.feed(piece))
            if self.stream.error is not None:
                break
        else:
            self.outs.append(self.stream.close())
        self.data = b"".join(out.data for out in self.outs)
        self.deltas = sum(out.deltas for out in self.outs)
        self.last = self.outs[-1]


def splits(raw: bytes, rng: random.Random) -> list[bytes]:
    """``raw`` cut at random points (single bytes, a few bytes, big pieces)."""
    pieces: list[bytes] = []
    i = 0
    while i < len(raw):
        step = rng.choice([1, 2, 3, 7, 64, 97, 500, 4096])
        pieces.append(raw[i : i + step])
        i += step
    return pieces


def event(kind: str, **fields: Any) -> bytes:
    return encode_event(orjson.dumps({"type": kind, **fields}), kind)


def start(usage: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {
        "id": "msg_upstream",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1} if usage is None else usage,
    }
    return event("message_start", message=message)


def text_block(text: str = "Hi") -> bytes:
    return (
        event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        + event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})
        + event("content_block_stop", index=0)
    )


def finish(usage: dict[str, Any] | None = None, stop: str = "end_turn") -> bytes:
    fields: dict[str, Any] = {"delta": {"stop_reason": stop, "stop_sequence": None}}
    if usage is not None:
        fields["usage"] = usage
    return event("message_delta", **fields)


STOP = event("message_stop")

# --------------------------------------------------------------------------- request


def test_rewrite_request_changes_only_model_and_max_tokens() -> None:
    body: dict[str, Any] = {
        "model": "claude-alias",
        "max_tokens": 64000,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Call the tool.", "signature": "EoQDsig=="},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "sunny",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            },
        ],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "top_k": 5,
        "stream": True,
        "metadata": {"user_id": "u-1"},
    }
    parse_request(body, {"anthropic-beta": "interleaved-thinking-2025-05-14"})  # a valid body
    before = copy.deepcopy(body)
    out = rewrite_request(body, "claude-sonnet-4-5-20250929", 8192)
    assert body == before  # the input is not changed
    assert out == {**before, "model": "claude-sonnet-4-5-20250929", "max_tokens": 8192}
    assert list(out) == list(before)  # and the members keep their order


# --------------------------------------------------------------------------- recordings

RECORDED: dict[str, dict[str, Any]] = {
    # Two non-empty thinking deltas (one empty one and the signature do not count) and
    # the tool_use block's start (its name; its only input fragment is empty).
    "anthropic_messages_thinking_tool_use_stream.sse": {
        "deltas": 3,
        "usage": Usage(input_tokens=598, output_tokens=92, reasoning_tokens=53),
    },
    "anthropic_messages_thinking_text_stream.sse": {
        "deltas": None,  # counted from the recording below
        "usage": Usage(input_tokens=43, output_tokens=282),
    },
    # message_delta's top level says 181 in / 0 read / 8 out; its iterations add up to
    # 281 in and 91 out; message_start said 55,096 read: each count's highest stays.
    "anthropic_messages_cache_read_compaction_stream.sse": {
        "deltas": 3,  # "Hello!", " ", the emoji: the compaction summary is not counted
        "usage": Usage(input_tokens=281 + 55096, output_tokens=91, cached_input_tokens=55096),
    },
    "anthropic_messages_text_cache_usage.sse": {
        "deltas": 1,
        "usage": Usage(input_tokens=20, output_tokens=5),
    },
    # Two text deltas, the tool_use start, and the non-empty input fragments.
    "anthropic_messages_tool_use.sse": {
        "deltas": None,
        "usage": Usage(input_tokens=377, output_tokens=65),
    },
}


def counted_deltas(raw: bytes) -> int:
    """The generated-output events of a recording, counted by the rule."""
    members = {
        "text_delta": "text",
        "thinking_delta": "thinking",
        "input_json_delta": "partial_json",
    }
    total = 0
    for _, data in parse(raw):
        if data["type"] == "content_block_delta":
            member = members.get(data["delta"]["type"])
            total += bool(member and data["delta"].get(member))
        elif data["type"] == "content_block_start":
            total += data["content_block"]["type"] == "tool_use"
    return total


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_is_relayed_with_its_id_and_model_restamped(name: str) -> None:
    raw = (DATA / name).read_bytes()
    run = Run([raw])
    assert run.stream.error is None
    assert parse(run.data) == expected_relay(raw)
    want = RECORDED[name]
    assert run.deltas == (want["deltas"] if want["deltas"] is not None else counted_deltas(raw))
    assert run.deltas > 0
    assert run.last.finished
    assert run.last.done
    assert run.last.usage_final
    assert run.last.usage == want["usage"]
    assert run.last.cache_write_1h_tokens == 0


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_in_random_splits_gives_the_same_bytes_and_signals(name: str) -> None:
    raw = (DATA / name).read_bytes()
    whole = Run([raw])
    rng = random.Random(name)
    for _ in range(25):
        run = Run(splits(raw, rng))
        assert run.data == whole.data
        assert run.deltas == whole.deltas
        last, want = run.last, whole.last
        assert (last.finished, last.done, last.usage, last.usage_final, last.error) == (
            want.finished,
            want.done,
            want.usage,
            want.usage_final,
            None,
        )


def test_recorded_stream_keeps_every_other_byte_of_its_events() -> None:
    """Events other than message_start are relayed with their data as received (the
    live API's whitespace padding included)."""
    raw = (DATA / "anthropic_messages_thinking_tool_use_stream.sse").read_bytes()
    parser = SSEParser()
    upstream = [e.data for e in parser.feed(raw) + parser.close()]
    relayed = [e.data for e in SSEParser().feed(Run([raw]).data)]
    assert relayed[1:] == upstream[1:]
    assert b'{"type":"message_stop"    }' in relayed
    assert b"EoQDCm0IDhgCKkCDzGs2kL2P" in relayed[6]  # the thinking's signature, as signed


def test_message_start_is_restamped_and_nothing_else_in_it_changes() -> None:
    raw = (DATA / "anthropic_messages_cache_read_compaction_stream.sse").read_bytes()
    upstream = parse(raw)[0][1]["message"]
    relayed = parse(Run([raw]).data)[0][1]["message"]
    assert relayed["id"] == GATEWAY_ID
    assert relayed["model"] == ALIAS
    assert {**relayed, "id": upstream["id"], "model": upstream["model"]} == upstream


# --------------------------------------------------------------------------- the start


def test_message_start_and_pings_are_held_until_the_answer_begins() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    held = stream.feed(start() + event("ping"))
    assert held.data == b""
    assert not stream.begun
    assert held.usage == Usage(input_tokens=10, output_tokens=1)
    assert not held.usage_final
    out = stream.feed(text_block())
    assert stream.begun
    assert [name for name, _ in parse(out.data)] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    assert out.deltas == 1


def test_an_error_right_after_message_start_writes_nothing() -> None:
    """Anthropic's usual overload: nothing went to the client, so the gateway may still
    retry or fall back; the provider's text is not relayed, its code is."""
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    error = {"type": "overloaded_error", "message": "Overloaded, key sk-ant-api03-XYZ"}
    out = stream.feed(start() + event("error", error=error) + text_block())
    assert out.data == b""
    assert not stream.begun
    assert out.error is not None
    assert out.error is stream.error
    assert out.error.declared
    assert out.error.message == "the provider reported an error (overloaded_error)"
    assert "sk-ant" not in out.error.message
    with pytest.raises(UpstreamStreamError) as raised:
        stream.feed(STOP)
    assert raised.value is out.error
    with pytest.raises(UpstreamStreamError):
        stream.close()
    with pytest.raises(UpstreamStreamError):
        stream.check()


def test_an_error_mid_stream_relays_what_came_before_it_and_not_itself() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS, secret="sk-ant-secretkey123")
    first = stream.feed(start() + text_block("Hello"))
    error = {"type": "sk-ant-secretkey123", "message": "boom"}  # a code resembling the key
    out = stream.feed(
        event("content_block_start", index=1, content_block={"type": "text", "text": ""})
        + event("error", error=error)
        + text_block("never")
    )
    kinds = [data["type"] for _, data in parse(first.data + out.data)]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
    ]
    assert out.error is not None
    assert out.error.declared
    assert out.error.message == "the provider reported an error"  # the code is dropped
    assert not out.finished
    assert out.usage == Usage(input_tokens=10, output_tokens=1)


def test_an_error_event_named_only_by_its_event_line_fails_the_stream() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    stream.feed(start() + text_block())
    out = stream.feed(b'event: error\ndata: {"error": {"type": "api_error"}}\n\n')
    assert out.data == b""
    assert out.error is not None
    assert out.error.declared


@pytest.mark.parametrize(
    "bad",
    [
        b"data: {not json\n\n",
        b"data: [1, 2]\n\n",
        event("message_delta", delta="end_turn"),
        event("content_block_delta", index=0, delta=["x"]),
    ],
)
def test_an_unreadable_event_fails_the_stream_after_the_bytes_before_it(bad: bytes) -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    out = stream.feed(start() + text_block() + bad + finish({"output_tokens": 3}) + STOP)
    assert [data["type"] for _, data in parse(out.data)][-1] == "content_block_stop"
    assert out.error is not None
    assert not out.error.declared
    assert out.error.message.startswith("the provider sent ")
    assert not out.finished


def test_an_oversize_event_fails_the_stream_after_the_events_before_it() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    huge = b'data: {"type":"content_block_delta","delta":{"text":"' + b"x" * MAX_EVENT_BYTES
    out = stream.feed(start() + text_block() + huge)
    assert [data["type"] for _, data in parse(out.data)][-1] == "content_block_stop"
    assert out.error is not None
    assert not out.error.declared
    assert "over" in out.error.message
    with pytest.raises(UpstreamStreamError):
        stream.feed(b"\n\n")


# --------------------------------------------------------------------------- the end


def test_usage_only_in_message_start_is_no_final_count() -> None:
    """A message_delta without usage: the counts are message_start's, whose output count
    is a placeholder: a running count, not the bill."""
    run = Run([start({"input_tokens": 50, "output_tokens": 1}) + text_block() + finish() + STOP])
    assert run.last.finished
    assert run.last.done
    assert run.last.usage == Usage(input_tokens=50, output_tokens=1)
    assert not run.last.usage_final


def test_no_usage_at_all_is_none() -> None:
    raw = start({}) + text_block() + finish() + STOP
    assert Run([raw]).last.usage is None


def test_output_tokens_never_decrease() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    stream.feed(start() + text_block())
    first = stream.feed(event("message_delta", delta={}, usage={"output_tokens": 50}))
    assert first.usage is not None
    assert first.usage.output_tokens == 50
    assert first.usage_final
    assert not first.finished
    out = stream.feed(finish({"output_tokens": 30, "input_tokens": 4}) + STOP)
    assert out.usage == Usage(input_tokens=10, output_tokens=50)
    assert out.finished
    assert out.done


def test_a_missing_message_stop_is_added_at_close() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    out = stream.feed(start() + text_block() + finish({"output_tokens": 7}))
    assert out.finished
    assert not out.done
    end = stream.close()
    assert parse(end.data) == [("message_stop", {"type": "message_stop"})]
    assert end.done
    assert end.error is None
    assert end.usage == Usage(10, 7)
    assert stream.close().data == b""
    assert stream.feed(text_block()).data == b""


def test_a_body_cut_before_its_stop_reason_fails_at_close() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    out = stream.feed(start() + text_block())
    assert out.error is None
    end = stream.close()
    assert end.data == b""
    assert end.error is not None
    assert not end.error.declared
    assert end.error.message == "the provider stream ended early"


def test_message_stop_before_a_stop_reason_fails_the_stream() -> None:
    out = NativeMessagesStream(GATEWAY_ID, ALIAS).feed(start() + text_block() + STOP)
    assert out.error is not None
    assert out.error.message == "the provider stream ended early"


def test_nothing_after_message_stop_is_read() -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    out = stream.feed(start() + text_block() + finish({"output_tokens": 2}) + STOP + b"garbage\n\n")
    assert out.done
    assert out.error is None
    assert parse(out.data)[-1] == ("message_stop", {"type": "message_stop"})
    assert stream.feed(b"data: {bad\n\n").data == b""
    assert stream.close().error is None


def test_unknown_events_and_blocks_pass_through_and_count_by_the_rule() -> None:
    unknown = (
        event(
            "content_block_start",
            index=0,
            content_block={"type": "redacted_thinking", "data": "Qk=="},
        )
        + event("content_block_stop", index=0)
        + event("content_block_start", index=1, content_block={"type": "thinking", "thinking": ""})
        + event("content_block_delta", index=1, delta={"type": "signature_delta", "signature": "s"})
        + event("content_block_delta", index=1, delta={"type": "thinking_delta", "thinking": ""})
        + event("content_block_delta", index=1, delta={"type": "thinking_delta", "thinking": "Hm"})
        + event("content_block_delta", index=1, delta={"type": "citations_delta", "citation": {}})
        + event("some_future_event", payload=[1, 2.5, None])
        + event("content_block_start", index=2, content_block={"type": "text", "text": "Hi"})
        + event(
            "content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": ""}
        )
    )
    run = Run([start() + unknown + finish({"output_tokens": 9}) + STOP])
    assert run.stream.error is None
    assert parse(run.data)[1:-2] == parse(unknown)
    assert run.deltas == 3  # redacted thinking, "Hm", the text block's initial "Hi"


def test_events_without_a_name_are_named_by_their_type() -> None:
    """The anthropic SDK skips events without an ``event:`` line."""
    named = start() + text_block() + finish({"output_tokens": 2}) + STOP
    raw = b"".join(encode_event(orjson.dumps(data)) for _, data in parse(named))
    assert b"event:" not in raw
    run = Run([raw])
    assert parse(run.data) == [(data["type"], data) for _, data in expected_relay(named)]
    assert run.last.done


# --------------------------------------------------------------------------- usage


def test_one_hour_cache_writes_are_exposed_apart() -> None:
    usage = {
        "input_tokens": 12,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 400,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 300},
        "output_tokens": 1,
    }
    run = Run([start(usage) + text_block() + finish({"output_tokens": 20}) + STOP])
    assert run.last.usage == Usage(
        input_tokens=12 + 1000 + 400,
        output_tokens=20,
        cached_input_tokens=1000,
        cache_creation_input_tokens=400,
    )
    assert run.last.cache_write_1h_tokens == 300


def test_the_ttl_split_never_says_less_was_written_than_its_parts() -> None:
    found = message_usage(
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 30},
        }
    )
    assert found == (Usage(input_tokens=41, output_tokens=1, cache_creation_input_tokens=40), 30)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "12", 10**12 + 1, [3]])
@pytest.mark.parametrize("key", ["input_tokens", "cache_read_input_tokens", "output_tokens"])
def test_an_untrustworthy_count_is_no_usage_for_the_rest_of_the_stream(key: str, bad: Any) -> None:
    stream = NativeMessagesStream(GATEWAY_ID, ALIAS)
    out = stream.feed(start({"input_tokens": 10, "output_tokens": 1, key: bad}) + text_block())
    assert out.usage is None
    out = stream.feed(finish({"input_tokens": 10, "output_tokens": 5}) + STOP)
    assert out.usage is None
    assert not out.usage_final
    assert out.finished


def test_an_untrustworthy_ttl_split_is_no_usage() -> None:
    usage = {
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_creation": {"ephemeral_1h_input_tokens": -4},
    }
    assert message_usage(usage) is None
    assert message_usage({**usage, "cache_creation": "lots"}) is None


def test_a_total_over_the_cap_is_no_usage() -> None:
    half = 10**12 // 2 + 1
    assert (
        message_usage({"input_tokens": half, "cache_read_input_tokens": half, "output_tokens": 1})
        is None
    )


# --------------------------------------------------------------------------- unary


def test_native_unary_on_a_recorded_message() -> None:
    message = json.loads((DATA / "anthropic_message_cache_unary.json").read_text())
    before = copy.deepcopy(message)
    out, usage = native_unary(message, GATEWAY_ID, ALIAS)
    assert message == before
    assert out == {**before, "id": GATEWAY_ID, "model": ALIAS}
    assert usage == Usage(
        input_tokens=3 + 418 + 1111,
        output_tokens=33,
        cached_input_tokens=1111,
        cache_creation_input_tokens=418,
    )
    assert message_usage(message["usage"]) == (usage, 0)


def test_native_unary_with_thinking_tokens_and_one_hour_writes() -> None:
    message = {
        "id": "msg_up",
        "type": "message",
        "model": "claude-opus-4-1",
        "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "a"},
        ],
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 60,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 60},
            "output_tokens": 90,
            "output_tokens_details": {"thinking_tokens": 70},
        },
    }
    out, usage = native_unary(message, GATEWAY_ID, ALIAS)
    assert out["content"] == message["content"]
    assert usage == Usage(
        input_tokens=65, output_tokens=90, reasoning_tokens=70, cache_creation_input_tokens=60
    )
    assert message_usage(message["usage"]) == (usage, 60)


@pytest.mark.parametrize(
    "usage",
    [None, "many", {}, {"input_tokens": 5}, {"input_tokens": 5, "output_tokens": -1}],
)
def test_native_unary_without_a_usable_usage(usage: Any) -> None:
    message: dict[str, Any] = {"id": "m", "type": "message", "model": "x", "content": []}
    if usage is not None:
        message["usage"] = usage
    assert native_unary(message, GATEWAY_ID, ALIAS)[1] is None


@pytest.mark.parametrize("message", [None, [], {"type": "message"}, {"content": "text"}])
def test_native_unary_refuses_what_is_no_message(message: Any) -> None:
    with pytest.raises(ValueError, match="not an Anthropic message"):
        native_unary(message, GATEWAY_ID, ALIAS)
