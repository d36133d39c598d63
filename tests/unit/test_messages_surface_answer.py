"""Unit tests for gateway.surfaces.messages_answer: chat chunks -> Anthropic SSE events
(checked against the protocol's ordering rules by an accumulator that rebuilds the
message as a client does), chat.completion -> Message, and error bodies by status."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import SSEParser
from gateway.surfaces.messages import (
    MessagesStream,
    anthropic_usage,
    error_body,
    error_type,
    stop_reason,
    unary_message,
)
from gateway.usage import Usage
from tests.support.upstream import choice, chunk

USAGE = Usage(
    input_tokens=1000,
    output_tokens=120,
    cached_input_tokens=600,
    cache_creation_input_tokens=300,
    reasoning_tokens=40,
)
ANTHROPIC_USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 600,
    "output_tokens": 120,
    "output_tokens_details": {"thinking_tokens": 40},
}


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of ``data``: each named, its data the JSON of that type."""
    parser = SSEParser()
    out = []
    for event in [*parser.feed(data), *parser.close()]:
        payload = json.loads(event.data)
        assert event.event == payload["type"], event
        out.append((payload["type"], payload))
    assert data.endswith(b"\n\n") or not data
    return out


def accumulate(data: bytes) -> dict[str, Any]:
    """The message a client rebuilds from the events, checking Anthropic's ordering:
    message_start first; blocks started with the next index, deltas only to the open
    block, each stopped once, before message_delta; message_stop last."""
    message: dict[str, Any] | None = None
    open_index: int | None = None
    arguments: dict[int, str] = {}
    stopped = False
    for kind, payload in events(data):
        assert not stopped, f"{kind} after message_stop"
        if kind == "message_start":
            assert message is None
            message = dict(payload["message"])
            message["content"] = []
            continue
        assert message is not None, f"{kind} before message_start"
        if kind == "ping":
            continue
        if kind == "content_block_start":
            assert open_index is None, "a block started while another is open"
            assert payload["index"] == len(message["content"])
            open_index = payload["index"]
            message["content"].append(dict(payload["content_block"]))
        elif kind == "content_block_delta":
            assert payload["index"] == open_index, "a delta to a block that is not open"
            block = message["content"][payload["index"]]
            delta = payload["delta"]
            if delta["type"] == "text_delta":
                assert block["type"] == "text"
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                assert block["type"] == "thinking"
                block["thinking"] += delta["thinking"]
            else:
                assert delta["type"] == "input_json_delta"
                assert block["type"] == "tool_use"
                arguments[payload["index"]] = (
                    arguments.get(payload["index"], "") + delta["partial_json"]
                )
        elif kind == "content_block_stop":
            assert payload["index"] == open_index
            block = message["content"][open_index]
            if block["type"] == "tool_use" and open_index in arguments:
                block["input"] = json.loads(arguments[open_index])
            open_index = None
        elif kind == "message_delta":
            assert open_index is None, "message_delta with a block open"
            message.update(payload["delta"])
            message["usage"] = payload["usage"]
        elif kind == "message_stop":
            stopped = True
        else:
            raise AssertionError(f"unexpected event {kind}")
    assert message is not None
    return message


def tool(
    index: int, arguments: str, id_: str | None = None, name: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id_ is not None:
        call["id"] = id_
        call["type"] = "function"
    if name is not None:
        call["function"]["name"] = name
    return call


def run(chunks: list[dict[str, Any]], usage: Usage = USAGE, estimate: int = 5000) -> bytes:
    stream = MessagesStream("msg_abc", "my-alias")
    out = stream.start(estimate)
    for piece in chunks:
        out += stream.feed(piece)
    return out + stream.finish(usage)


# ============================================================================ framing


def test_message_start() -> None:
    data = MessagesStream("msg_abc", "my-alias").start(4321)
    assert data.startswith(b"event: message_start\ndata: {")
    [(_kind, payload)] = events(data)
    assert payload == {
        "type": "message_start",
        "message": {
            "id": "msg_abc",
            "type": "message",
            "role": "assistant",
            "model": "my-alias",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 4321,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        },
    }


def test_start_is_sent_once() -> None:
    stream = MessagesStream("m", "a")
    assert stream.start(1)
    assert stream.start(1) == b""


def test_a_text_stream() -> None:
    data = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hello"}),
            chunk({"content": ", world"}),
            chunk({}, "stop"),
            {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 1}},
        ]
    )
    kinds = [kind for kind, _ in events(data)]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    parsed = events(data)
    assert parsed[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert parsed[2][1] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hello"},
    }
    assert parsed[4][1] == {"type": "content_block_stop", "index": 0}
    assert parsed[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": ANTHROPIC_USAGE,
    }
    assert parsed[6][1] == {"type": "message_stop"}
    message = accumulate(data)
    assert message["content"] == [{"type": "text", "text": "Hello, world"}]


def test_usage_only_chunks_and_empty_deltas_send_nothing() -> None:
    stream = MessagesStream("m", "a")
    stream.start(0)
    assert stream.feed({"choices": [], "usage": {"prompt_tokens": 3}}) == b""
    assert stream.feed({"choices": "bad"}) == b""
    assert stream.feed(chunk({"role": "assistant"})) == b""
    assert stream.feed(chunk({"content": ""})) == b""


def test_reasoning_then_text() -> None:
    message = accumulate(
        run(
            [
                chunk({"reasoning_content": "Think "}),
                chunk({"reasoning_content": "hard."}),
                chunk({"content": "Answer"}),
                chunk({}, "stop"),
            ]
        )
    )
    assert message["content"] == [
        {"type": "thinking", "thinking": "Think hard.", "signature": ""},
        {"type": "text", "text": "Answer"},
    ]


def test_reasoning_field_of_other_servers() -> None:
    message = accumulate(
        run([chunk({"reasoning": "Hmm."}), chunk({"content": "Yes"}), chunk({}, "stop")])
    )
    assert [block["type"] for block in message["content"]] == ["thinking", "text"]


def test_refusal_text_is_text() -> None:
    message = accumulate(run([chunk({"refusal": "I can't."}), chunk({}, "content_filter")]))
    assert message["content"] == [{"type": "text", "text": "I can't."}]
    assert message["stop_reason"] == "refusal"


def test_tool_calls_stream_as_input_json_deltas() -> None:
    data = run(
        [
            chunk({"content": "Let me check."}),
            chunk({"tool_calls": [tool(0, "", "call_1", "weather")]}),
            chunk({"tool_calls": [tool(0, '{"city": ')]}),
            chunk({"tool_calls": [tool(0, '"Paris"}')]}),
            chunk({"tool_calls": [tool(1, '{"city": "Rome"}', "call_2", "weather")]}),
            chunk({}, "tool_calls"),
        ]
    )
    parsed = events(data)
    assert parsed[4][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}},
    }
    assert parsed[5][1] == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
    }
    message = accumulate(data)
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_the_first_tool_call_streams_live() -> None:
    stream = MessagesStream("m", "a")
    stream.start(0)
    first = events(stream.feed(chunk({"tool_calls": [tool(0, '{"a"', "c1", "f")]})))
    assert [kind for kind, _ in first] == ["content_block_start", "content_block_delta"]
    more = events(stream.feed(chunk({"tool_calls": [tool(0, ": 1}")]})))
    assert more[0][1]["delta"] == {"type": "input_json_delta", "partial_json": ": 1}"}


def test_interleaved_tool_calls_hold_the_later_one() -> None:
    stream = MessagesStream("m", "a")
    out = stream.start(0)
    out += stream.feed(
        chunk({"tool_calls": [tool(0, '{"x":', "c1", "f"), tool(1, '{"y":', "c2", "g")]})
    )
    held = stream.feed(chunk({"tool_calls": [tool(1, " 2}")]}))
    assert held == b"", "the second call is held while the first streams"
    live = stream.feed(chunk({"tool_calls": [tool(0, " 1}")]}))
    assert [payload["index"] for _, payload in events(live)] == [0]
    out += held + live + stream.feed(chunk({}, "tool_calls")) + stream.finish(USAGE)
    message = accumulate(out)
    assert message["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "c2", "name": "g", "input": {"y": 2}},
    ]


def test_text_after_a_tool_call_is_held_and_sent_after_it() -> None:
    message = accumulate(
        run(
            [
                chunk({"tool_calls": [tool(0, "{}", "c1", "f")]}),
                chunk({"content": "Done"}),
                chunk({"content": " now."}),
                chunk({}, "tool_calls"),
            ]
        )
    )
    assert message["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
        {"type": "text", "text": "Done now."},
    ]


def test_a_nameless_first_delta_is_held_until_the_end() -> None:
    stream = MessagesStream("m", "a")
    out = stream.start(0)
    assert stream.feed(chunk({"tool_calls": [tool(0, "", "c1")]})) == b""
    assert stream.feed(chunk({"tool_calls": [tool(0, '{"q": 1}', name="search")]})) == b""
    out += stream.finish(USAGE)
    assert accumulate(out)["content"] == [
        {"type": "tool_use", "id": "c1", "name": "search", "input": {"q": 1}}
    ]


def test_a_tool_call_without_id_gets_one() -> None:
    message = accumulate(
        run(
            [
                chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}),
                chunk({}, "tool_calls"),
            ]
        )
    )
    [block] = message["content"]
    assert block["id"].startswith("toolu_msg_abc_")


def test_tool_calls_without_index_use_their_position() -> None:
    calls = [
        {"id": "c1", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "function": {"name": "g", "arguments": "{}"}},
    ]
    message = accumulate(run([chunk({"tool_calls": calls}), chunk({}, "tool_calls")]))
    assert [block["id"] for block in message["content"]] == ["c1", "c2"]


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        ("something_new", "end_turn"),
    ],
)
def test_stop_reasons(finish: str, expected: str) -> None:
    message = accumulate(run([chunk({"content": "x"}), chunk({}, finish)]))
    assert message["stop_reason"] == expected
    assert message["stop_sequence"] is None
    assert stop_reason(finish) == expected


def test_stop_reason_helper_on_non_strings() -> None:
    assert stop_reason(None) == "end_turn"
    assert stop_reason(3) == "end_turn"


def test_a_matched_stop_sequence_from_servers_that_name_it() -> None:
    message = accumulate(
        run([chunk({"content": "1, 2, 3"}), chunk(choices=[choice({}, "stop", stop_reason="END")])])
    )
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == "END"
    # vLLM names a stop token by its id: no sequence.
    message = accumulate(
        run([chunk({"content": "x"}), chunk(choices=[choice({}, "stop", stop_reason=128001)])])
    )
    assert message["stop_reason"] == "end_turn"


def test_a_stream_that_ends_without_a_finish_reason() -> None:
    message = accumulate(run([chunk({"content": "cut"})]))
    assert message["content"] == [{"type": "text", "text": "cut"}]
    assert message["stop_reason"] == "end_turn"


def test_an_empty_answer() -> None:
    message = accumulate(run([chunk({}, "stop")]))
    assert message["content"] == []
    assert message["usage"] == ANTHROPIC_USAGE


def test_final_usage_is_the_usage_given() -> None:
    message = accumulate(
        run([chunk({"content": "x"}), chunk({}, "stop")], Usage(input_tokens=7, output_tokens=3))
    )
    assert message["usage"] == {
        "input_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 3,
    }


def test_anthropic_usage_never_negative() -> None:
    odd = Usage(input_tokens=5, output_tokens=1, cached_input_tokens=9)
    assert anthropic_usage(odd)["input_tokens"] == 0
    assert anthropic_usage(USAGE) == ANTHROPIC_USAGE


def test_feed_before_start_starts_the_message() -> None:
    stream = MessagesStream("m", "a")
    data = stream.feed(chunk({"content": "x"}))
    assert [kind for kind, _ in events(data)][:2] == ["message_start", "content_block_start"]
    assert stream.start(10) == b""


def test_finish_before_start_reports_everything() -> None:
    stream = MessagesStream("m", "a")
    message = accumulate(stream.finish(USAGE))
    assert message["usage"] == ANTHROPIC_USAGE
    assert message["content"] == []


def test_nothing_after_finish() -> None:
    stream = MessagesStream("m", "a")
    stream.start(0)
    stream.finish(USAGE)
    assert stream.feed(chunk({"content": "late"})) == b""
    assert stream.finish(USAGE) == b""
    assert stream.fail("upstream_error", "x") == b""
    assert stream.ping() == b""


def test_ping() -> None:
    stream = MessagesStream("m", "a")
    assert events(stream.ping()) == [("ping", {"type": "ping"})]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("upstream_error", "api_error"),
        ("stream_error", "api_error"),
        ("upstream_timeout", "timeout_error"),
        ("idle_timeout", "timeout_error"),
        ("gateway_shutdown", "overloaded_error"),
        ("upstream_rate_limited", "rate_limit_error"),
        ("overloaded_error", "overloaded_error"),
        ("invalid_request_error", "invalid_request_error"),
    ],
)
def test_fail_sends_an_error_event(code: str, kind: str) -> None:
    stream = MessagesStream("m", "a")
    stream.start(0)
    stream.feed(chunk({"content": "partial"}))
    data = stream.fail(code, "the provider stream ended early")
    assert data.startswith(b"event: error\n")
    assert events(data) == [
        (
            "error",
            {
                "type": "error",
                "error": {
                    "type": kind,
                    "message": "the provider stream ended early",
                    "details": {"error_code": code},
                },
            },
        )
    ]
    assert stream.feed(chunk({"content": "more"})) == b""
    assert stream.finish(USAGE) == b""


# ============================================================================ property


@st.composite
def scripts(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Random chat streams: text, reasoning and up to 3 tool calls whose argument
    fragments interleave in any order (each call named on its first delta)."""
    n_tools = draw(st.integers(0, 3))
    pieces: list[tuple[str, int, str]] = []
    for i in range(n_tools):
        args = json.dumps({"k": draw(st.text(max_size=8)), "i": i})
        cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=3)))
        bounds = [0, *cuts, len(args)]
        pieces.extend(("tool", i, args[a:b]) for a, b in itertools.pairwise(bounds))
    for _ in range(draw(st.integers(0, 4))):
        pieces.append(
            (
                draw(st.sampled_from(["text", "reasoning"])),
                -1,
                draw(st.text(min_size=1, max_size=5)),
            )
        )
    order = draw(st.permutations(pieces))
    # A tool call's fragments keep their own order, whatever the interleaving.
    by_tool: dict[int, list[str]] = {}
    for kind, i, frag in pieces:
        if kind == "tool":
            by_tool.setdefault(i, []).append(frag)
    chunks: list[dict[str, Any]] = []
    seen: set[int] = set()
    for kind, i, frag in order:
        if kind == "tool":
            frag = by_tool[i].pop(0)
            first = i not in seen
            seen.add(i)
            call = tool(i, frag, f"c{i}" if first else None, f"fn{i}" if first else None)
            chunks.append(chunk({"tool_calls": [call]}))
        elif kind == "text":
            chunks.append(chunk({"content": frag}))
        else:
            chunks.append(chunk({"reasoning_content": frag}))
    chunks.append(chunk({}, draw(st.sampled_from(["stop", "tool_calls", "length"]))))
    return chunks


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(scripts())
def test_any_interleaving_makes_a_well_formed_message(chunks: list[dict[str, Any]]) -> None:
    message = accumulate(run(chunks))  # the ordering rules are checked there
    texts = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    content = message["content"]
    assert "".join(b["text"] for b in content if b["type"] == "text") == texts
    assert "".join(b["thinking"] for b in content if b["type"] == "thinking") == reasoning
    calls = {b["id"]: b for b in content if b["type"] == "tool_use"}
    arguments: dict[int, str] = {}
    for c in chunks:
        for call in c["choices"][0]["delta"].get("tool_calls", []):
            arguments[call["index"]] = (
                arguments.get(call["index"], "") + call["function"]["arguments"]
            )
    assert set(calls) == {f"c{i}" for i in arguments}
    for i, args in arguments.items():
        assert calls[f"c{i}"]["name"] == f"fn{i}"
        assert calls[f"c{i}"]["input"] == json.loads(args)
    assert message["usage"] == ANTHROPIC_USAGE


# ============================================================================ unary


def completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def test_unary_text() -> None:
    out = unary_message(
        completion({"role": "assistant", "content": "Hi!"}), USAGE, "msg_1", "my-alias"
    )
    assert out == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "my-alias",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }


def test_unary_tool_calls_with_parsed_input() -> None:
    out = unary_message(
        completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "c2", "type": "function", "function": {"name": "noop", "arguments": ""}},
                    {
                        "id": "c3",
                        "type": "function",
                        "function": {"name": "bad", "arguments": "{not json"},
                    },
                    {
                        "id": "c4",
                        "type": "function",
                        "function": {"name": "list", "arguments": "[1]"},
                    },
                    {"type": "function", "function": {"name": "anon", "arguments": "{}"}},
                    "garbage",
                ],
            },
            "tool_calls",
        ),
        USAGE,
        "msg_1",
        "a",
    )
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [
        {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "c2", "name": "noop", "input": {}},
        {"type": "tool_use", "id": "c3", "name": "bad", "input": {}},
        {"type": "tool_use", "id": "c4", "name": "list", "input": {}},
        {"type": "tool_use", "id": "toolu_msg_1_4", "name": "anon", "input": {}},
    ]


def test_unary_reasoning_text_and_tool_in_order() -> None:
    out = unary_message(
        completion(
            {
                "role": "assistant",
                "reasoning_content": "Weather needs a tool.",
                "content": "Checking.",
                "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": "{}"}}],
            },
            "tool_calls",
        ),
        USAGE,
        "m",
        "a",
    )
    assert [b["type"] for b in out["content"]] == ["thinking", "text", "tool_use"]
    assert out["content"][0] == {
        "type": "thinking",
        "thinking": "Weather needs a tool.",
        "signature": "",
    }


def test_unary_content_parts() -> None:
    out = unary_message(
        completion(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ),
        USAGE,
        "m",
        "a",
    )
    assert out["content"] == [{"type": "text", "text": "ab"}]


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_unary_stop_reasons(finish: Any, expected: str) -> None:
    out = unary_message(completion({"role": "assistant", "content": "x"}, finish), USAGE, "m", "a")
    assert out["stop_reason"] == expected


def test_unary_stop_sequence() -> None:
    out = unary_message(
        completion({"role": "assistant", "content": "x"}, "stop", stop_reason="###"),
        USAGE,
        "m",
        "a",
    )
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "###")


def test_unary_refusal() -> None:
    out = unary_message(
        completion({"role": "assistant", "content": None, "refusal": "No."}), USAGE, "m", "a"
    )
    assert out["content"] == [{"type": "text", "text": "No."}]
    assert out["stop_reason"] == "refusal"


def test_unary_without_choices() -> None:
    bodies: list[dict[str, Any]] = [
        {"choices": []},
        {},
        {"choices": ["x"]},
        {"choices": [{"message": "x"}]},
    ]
    for body in bodies:
        out = unary_message(body, Usage(), "m", "a")
        assert out["content"] == []
        assert out["stop_reason"] == "end_turn"


def test_unary_usage_without_reasoning_has_no_details() -> None:
    out = unary_message(
        completion({"role": "assistant", "content": "x"}),
        Usage(input_tokens=3, output_tokens=1),
        "m",
        "a",
    )
    assert out["usage"] == {
        "input_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }


# ============================================================================ errors


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (408, "timeout_error"),
        (409, "conflict_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (418, "invalid_request_error"),
        (599, "api_error"),
    ],
)
def test_error_body(status: int, kind: str) -> None:
    assert error_type(status) == kind
    assert error_body(status, "budget would be exceeded", "budget_exhausted") == {
        "type": "error",
        "error": {
            "type": kind,
            "message": "budget would be exceeded",
            "details": {"error_code": "budget_exhausted"},
        },
    }


def test_error_body_without_code() -> None:
    assert error_body(500, "internal error", "") == {
        "type": "error",
        "error": {"type": "api_error", "message": "internal error"},
    }
