"""Unit tests for gateway.surfaces.responses.ResponsesStream: chat chunks -> Responses SSE.

Recorded chat streams (tests/data: OpenAI text, tool call and parallel tool calls,
DeepSeek reasoning, Groq's cut stream) are parsed with gateway.sse.SSEParser, fed
through the encoder, and its output is checked three ways: the exact event sequence,
every event validated against the official SDK's pydantic types (not constructed:
validated), and the SDK's own stream accumulator rebuilding the final response.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.sse import SSEParser
from gateway.surfaces.responses import ResponsesStream, parse_request
from gateway.usage import Usage
from tests.support.upstream import chunk

DATA = Path(__file__).resolve().parent.parent / "data"
USAGE = Usage(input_tokens=78, output_tokens=9, cached_input_tokens=5, reasoning_tokens=2)
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 8,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def chunks_of(name: str, slice_size: int | None = None) -> list[dict[str, Any]]:
    """The chat chunks of a recorded stream (no [DONE], no error frame)."""
    raw = (DATA / name).read_bytes()
    parser = SSEParser()
    pieces = (
        [raw]
        if slice_size is None
        else [raw[i : i + slice_size] for i in range(0, len(raw), slice_size)]
    )
    events = [e for piece in pieces for e in parser.feed(piece)] + parser.close()
    return [orjson.loads(e.data) for e in events if e.data != b"[DONE]" and e.event != "error"]


def new_stream(**body: Any) -> ResponsesStream:
    body.setdefault("model", "gpt-4o-mini")
    body.setdefault("input", "What is the capital of the UK?")
    request = parse_request({**body, "stream": True})
    return ResponsesStream("resp_test", "default", request, created_at=1_800_000_000)


def encode(stream: ResponsesStream, chunks: list[dict[str, Any]], usage: Usage = USAGE) -> bytes:
    out = stream.start()
    for piece in chunks:
        out += stream.feed(piece)
    return out + stream.finish(usage)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """Decode our SSE output, checking the framing: each event's name is its type, and
    the sequence numbers count from 0 without a gap."""
    parser = SSEParser()
    events = parser.feed(raw) + parser.close()
    payloads = []
    for n, event in enumerate(events):
        payload = orjson.loads(event.data)
        assert event.event == payload["type"]
        assert payload["sequence_number"] == n
        payloads.append(payload)
    return payloads


def validated(payloads: list[dict[str, Any]]) -> list[Any]:
    """Every event through the SDK's types, validated (a missing or mistyped field fails)."""
    return [EVENTS.validate_python(p) for p in payloads]


def accumulate(payloads: list[dict[str, Any]], text_format: Any = omit) -> Any:
    """The SDK's stream accumulator (what client.responses.stream() runs)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=text_format)
    for event in validated(payloads):
        state.handle_event(event)
    return state._completed_response


def tool_delta(index: int, **fields: Any) -> dict[str, Any]:
    function = {k: fields.pop(k) for k in ("name", "arguments") if k in fields}
    return chunk({"tool_calls": [{"index": index, **fields, "function": function}]})


def types(payloads: list[dict[str, Any]]) -> list[str]:
    return [p["type"] for p in payloads]


# --------------------------------------------------------------------------- recorded streams


@pytest.mark.parametrize("slice_size", [None, 97, 1], ids=["whole", "97-byte", "1-byte"])
def test_recorded_text_stream(slice_size: int | None) -> None:
    payloads = events_of(
        encode(new_stream(), chunks_of("openai_chat_text_include_usage.sse", slice_size))
    )
    assert types(payloads) == TEXT_EVENTS
    validated(payloads)
    deltas = "".join(p["delta"] for p in payloads if p["type"] == "response.output_text.delta")
    assert deltas == "The capital of the UK is London."
    done = payloads[-4]
    assert done["type"] == "response.output_text.done"
    assert done["text"] == deltas
    assert done["logprobs"] == []
    item = payloads[-2]["item"]
    assert item["type"] == "message"
    assert item["status"] == "completed"
    assert item["role"] == "assistant"
    assert item["content"] == [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": deltas}
    ]
    # Every event names the one item and its content part.
    assert {p.get("item_id", item["id"]) for p in payloads[3:-2]} == {item["id"]}
    response = payloads[-1]["response"]
    assert response["id"] == "resp_test"
    assert response["status"] == "completed"
    assert response["model"] == "default"  # the alias, not the provider's model
    assert response["output"] == [item]
    assert response["usage"] == {
        "input_tokens": 78,
        "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 87,
    }
    final = accumulate(payloads)
    assert final.output_text == "The capital of the UK is London."
    assert final.usage.input_tokens == 78
    assert final.usage.output_tokens_details.reasoning_tokens == 2


def test_created_and_in_progress_carry_an_empty_response() -> None:
    payloads = events_of(encode(new_stream(instructions="Be terse.", temperature=0.5), []))
    created, progress = payloads[0]["response"], payloads[1]["response"]
    assert created == progress
    assert created["status"] == "in_progress"
    assert created["output"] == []
    assert created["usage"] is None
    assert created["instructions"] == "Be terse."
    assert created["temperature"] == 0.5
    assert created["created_at"] == 1_800_000_000
    Response.model_validate(created)


def test_recorded_tool_call_stream() -> None:
    stream = new_stream(tools=[{"type": "function", "name": "get_capital"}])
    payloads = events_of(encode(stream, chunks_of("openai_chat_tool_call_include_usage.sse")))
    assert types(payloads) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 5,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    validated(payloads)
    added = payloads[2]["item"]
    assert added["type"] == "function_call"
    assert added["status"] == "in_progress"
    assert added["arguments"] == ""
    assert added["call_id"] == "call_ZR5UUuTt3pf61kjwAJIYdVMj"
    assert added["name"] == "get_capital"
    assert added["id"].startswith("fc_")
    assert payloads[-3]["arguments"] == '{"country":"UK"}'
    done = payloads[-2]["item"]
    assert done == {**added, "status": "completed", "arguments": '{"country":"UK"}'}
    final = accumulate(payloads)
    assert [o.type for o in final.output] == ["function_call"]
    assert final.output[0].arguments == '{"country":"UK"}'
    assert final.output_text == ""


def test_recorded_parallel_tool_calls() -> None:
    payloads = events_of(
        encode(new_stream(), chunks_of("openai_chat_parallel_tool_calls_include_usage.sse"))
    )
    validated(payloads)
    added = [p for p in payloads if p["type"] == "response.output_item.added"]
    assert [(p["output_index"], p["item"]["name"], p["item"]["call_id"]) for p in added] == [
        (0, "get_country", "call_q2UyBRP7eXNTzAoR8lEhjc9Z"),
        (1, "get_product_name", "call_b51ijcpFkDiTQG1bQzsrmtW5"),
    ]
    final = payloads[-1]["response"]["output"]
    assert [(o["name"], o["arguments"], o["status"]) for o in final] == [
        ("get_country", "{}", "completed"),
        ("get_product_name", "{}", "completed"),
    ]
    sdk = accumulate(payloads)
    assert [o.call_id for o in sdk.output] == [o["call_id"] for o in final]


def test_recorded_deepseek_reasoning_then_text() -> None:
    usage = Usage(input_tokens=6, output_tokens=212, reasoning_tokens=198)
    payloads = events_of(
        encode(new_stream(), chunks_of("deepseek_chat_reasoning_stream.sse"), usage)
    )
    validated(payloads)
    kinds = types(payloads)
    first_text = kinds.index("response.output_text.delta")
    # The reasoning item is done before the message begins.
    assert kinds.index("response.reasoning_text.done") < first_text
    assert kinds[:first_text].count("response.output_item.done") == 1
    reasoning, message = payloads[-1]["response"]["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == []
    thought = "".join(p["delta"] for p in payloads if p["type"] == "response.reasoning_text.delta")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": thought}]
    assert thought.startswith('Hmm, the user just said "Hello".')
    assert message["type"] == "message"
    assert message["id"].startswith("msg_")
    text = message["content"][0]["text"]
    assert text.endswith("How can I help you today?")
    assert payloads[-1]["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 198}
    assert accumulate(payloads).output_text == text


def test_recorded_groq_cut_stream_then_fail() -> None:
    """Groq's stream ends on an error frame: the gateway calls fail(); the response
    failed, with the reasoning so far, and an error event with the gateway's code."""
    stream = new_stream()
    out = stream.start()
    for c in chunks_of("openai_compat_groq_midstream_error_event.sse"):
        out += stream.feed(c)
    out += stream.fail("upstream_stream_error", "the provider ended the stream with an error")
    payloads = events_of(out)
    validated(payloads)
    assert types(payloads)[-2:] == ["response.failed", "error"]
    failed = payloads[-2]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "server_error",
        "message": "the provider ended the stream with an error",
    }
    [reasoning] = failed["output"]
    assert reasoning["status"] == "incomplete"
    assert reasoning["content"][0]["text"].startswith("We need to call")
    assert payloads[-1] == {
        "type": "error",
        "code": "upstream_stream_error",
        "message": "the provider ended the stream with an error",
        "param": None,
        "sequence_number": len(payloads) - 1,
    }
    assert stream.response == failed
    assert stream.finish(USAGE) == b""  # ended
    assert stream.fail("x", "y") == b""


# --------------------------------------------------------------------------- scripted streams


def test_length_is_incomplete_max_output_tokens() -> None:
    stream = new_stream(max_output_tokens=3)
    payloads = events_of(
        encode(stream, [chunk({"role": "assistant", "content": "One two"}), chunk({}, "length")])
    )
    validated(payloads)
    assert payloads[-1]["type"] == "response.incomplete"
    response = payloads[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["max_output_tokens"] == 3
    assert response["completed_at"] is None
    assert payloads[-2]["item"]["status"] == "incomplete"
    Response.model_validate(response)


def test_content_filter_is_incomplete_content_filter() -> None:
    payloads = events_of(encode(new_stream(), [chunk({"content": "x"}, "content_filter")]))
    assert payloads[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}


def test_refusal_is_a_refusal_part() -> None:
    payloads = events_of(
        encode(
            new_stream(),
            [chunk({"refusal": "I can't"}), chunk({"refusal": " help."}), chunk({}, "stop")],
        )
    )
    validated(payloads)
    assert types(payloads)[2:-1] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert payloads[3]["part"] == {"type": "refusal", "refusal": ""}
    assert payloads[6]["refusal"] == "I can't help."
    assert payloads[-1]["response"]["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help."}
    ]


def test_text_then_refusal_are_two_parts_of_one_message() -> None:
    payloads = events_of(
        encode(
            new_stream(),
            [chunk({"content": "Well."}), chunk({"refusal": "No."}), chunk({}, "stop")],
        )
    )
    validated(payloads)
    [message] = payloads[-1]["response"]["output"]
    assert message["content"] == [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "Well."},
        {"type": "refusal", "refusal": "No."},
    ]
    added = [p["content_index"] for p in payloads if p["type"] == "response.content_part.added"]
    assert added == [0, 1]


def test_text_then_tool_call_closes_the_message_first() -> None:
    payloads = events_of(
        encode(
            new_stream(),
            [
                chunk({"content": "Let me check."}),
                tool_delta(0, id="call_1", type="function", name="weather", arguments='{"ci'),
                tool_delta(0, arguments='ty":"Paris"}'),
                chunk({}, "tool_calls"),
            ],
        )
    )
    validated(payloads)
    kinds = types(payloads)
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta"
    )
    message, call = payloads[-1]["response"]["output"]
    assert message["content"][0]["text"] == "Let me check."
    assert (call["call_id"], call["arguments"]) == ("call_1", '{"city":"Paris"}')
    indexes = [p["output_index"] for p in payloads if p["type"] == "response.output_item.added"]
    assert indexes == [0, 1]
    final = accumulate(payloads)
    assert final.output_text == "Let me check."
    assert final.output[1].arguments == '{"city":"Paris"}'


def test_interleaved_parallel_fragments() -> None:
    payloads = events_of(
        encode(
            new_stream(),
            [
                tool_delta(0, id="c0", name="a", arguments='{"x"'),
                tool_delta(1, id="c1", name="b", arguments='{"y"'),
                tool_delta(0, arguments=":0}"),
                tool_delta(1, arguments=":1}"),
                chunk({}, "tool_calls"),
            ],
        )
    )
    final = accumulate(payloads)
    assert [(o.name, o.arguments) for o in final.output] == [("a", '{"x":0}'), ("b", '{"y":1}')]


def test_arguments_before_the_name_are_sent_once_it_is_known() -> None:
    payloads = events_of(
        encode(
            new_stream(),
            [
                tool_delta(0, id="c0", arguments=""),
                tool_delta(0, arguments='{"a":'),
                tool_delta(0, name="f", arguments="1}"),
                tool_delta(0, name="f"),  # some servers repeat the name
                chunk({}, "tool_calls"),
            ],
        )
    )
    validated(payloads)
    assert types(payloads)[2:5] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    assert payloads[3]["delta"] == '{"a":1}'
    assert payloads[-1]["response"]["output"][0]["name"] == "f"


def test_a_call_without_id_gets_one_and_one_without_index() -> None:
    payloads = events_of(
        encode(
            new_stream(),
            [
                chunk({"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}),
                chunk({}, "tool_calls"),
            ],
        )
    )
    [call] = payloads[-1]["response"]["output"]
    assert call["call_id"].startswith("call_")
    assert call["arguments"] == "{}"


def test_a_call_never_named_is_still_shown() -> None:
    payloads = events_of(encode(new_stream(), [tool_delta(0, id="c0", arguments="{}")]))
    validated(payloads)
    [call] = payloads[-1]["response"]["output"]
    assert (call["call_id"], call["name"], call["arguments"]) == ("c0", "", "{}")


def test_reasoning_field_of_groq_and_openrouter() -> None:
    payloads = events_of(
        encode(new_stream(), [chunk({"reasoning": "Think."}), chunk({"content": "Done."}, "stop")])
    )
    reasoning, message = payloads[-1]["response"]["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Think."}]
    assert message["content"][0]["text"] == "Done."


def test_reasoning_after_text_is_a_new_item() -> None:
    payloads = events_of(
        encode(
            new_stream(),
            [chunk({"content": "a"}), chunk({"reasoning_content": "b"}), chunk({"content": "c"})],
        )
    )
    validated(payloads)
    assert [o["type"] for o in payloads[-1]["response"]["output"]] == [
        "message",
        "reasoning",
        "message",
    ]
    assert accumulate(payloads).output_text == "ac"


def test_no_finish_reason_completes_at_finish() -> None:
    payloads = events_of(encode(new_stream(), [chunk({"content": "Hi"})]))
    assert types(payloads)[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_after_the_finish_reason_nothing_more_is_sent() -> None:
    stream = new_stream()
    stream.start()
    stream.feed(chunk({"content": "Hi"}, "stop"))
    assert stream.feed(chunk({"content": "late"})) == b""
    assert stream.feed({"choices": [], "usage": {"prompt_tokens": 1}}) == b""
    final = stream.finish(USAGE)
    assert stream.finish(USAGE) == b""
    assert stream.response is not None
    assert stream.response["output"][0]["content"][0]["text"] == "Hi"
    assert b"late" not in final


def test_other_choices_and_empty_deltas_are_ignored() -> None:
    stream = new_stream()
    stream.start()
    assert stream.feed(chunk({"content": "other"}, index=1)) == b""
    assert stream.feed(chunk({"role": "assistant", "content": ""})) == b""
    assert stream.feed({"choices": None}) == b""
    assert stream.feed(chunk({"content": None, "tool_calls": None, "refusal": None})) == b""


def test_feed_starts_the_stream_and_start_runs_once() -> None:
    stream = new_stream()
    first = events_of(stream.feed(chunk({"content": "Hi"})))
    assert types(first)[:2] == ["response.created", "response.in_progress"]
    assert stream.start() == b""


def test_fail_before_anything_still_begins_with_created() -> None:
    stream = new_stream()
    payloads = events_of(stream.fail("upstream_timeout", "the provider did not answer in time"))
    assert types(payloads) == [
        "response.created",
        "response.in_progress",
        "response.failed",
        "error",
    ]
    validated(payloads)
    assert payloads[2]["response"]["output"] == []


def test_fail_keeps_a_known_error_code() -> None:
    payloads = events_of(new_stream().fail("rate_limit_exceeded", "slow down"))
    assert payloads[2]["response"]["error"]["code"] == "rate_limit_exceeded"


def test_fail_closes_nothing_but_marks_open_items() -> None:
    stream = new_stream()
    out = stream.feed(chunk({"content": "Partial"}))
    out += stream.feed(tool_delta(0, id="c", name="f", arguments="{"))
    out += stream.fail("upstream_failed", "cut")
    payloads = events_of(out)
    validated(payloads)
    message, call = payloads[-2]["response"]["output"]
    assert message["status"] == "completed"  # closed when the call began
    assert call["status"] == "incomplete"
    assert call["arguments"] == "{"


def test_echo_fields_in_the_final_response() -> None:
    stream = new_stream(
        instructions="Be terse.",
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "f"},
        text={"format": {"type": "json_object"}},
        temperature=0.3,
        top_p=0.8,
        max_output_tokens=100,
        parallel_tool_calls=False,
        store=False,
        metadata={"k": "v"},
        previous_response_id="resp_prev",
        reasoning={"effort": "low"},
        user="u",
    )
    response = events_of(encode(stream, [chunk({"content": "{}"}, "stop")]))[-1]["response"]
    Response.model_validate(response)
    assert response["instructions"] == "Be terse."
    assert response["tools"] == [
        {
            "type": "function",
            "name": "f",
            "description": None,
            "parameters": {"type": "object"},
            "strict": None,
        }
    ]
    assert response["tool_choice"] == {"type": "function", "name": "f"}
    assert response["text"] == {"format": {"type": "json_object"}}
    assert (response["temperature"], response["top_p"]) == (0.3, 0.8)
    assert response["max_output_tokens"] == 100
    assert response["parallel_tool_calls"] is False
    assert response["store"] is False
    assert response["metadata"] == {"k": "v"}
    assert response["previous_response_id"] == "resp_prev"
    assert response["reasoning"] == {"effort": "low", "summary": None}
    assert response["user"] == "u"
    assert isinstance(response["completed_at"], int)


def test_parse_with_a_text_format_through_the_sdk_accumulator() -> None:
    from pydantic import BaseModel

    class Capital(BaseModel):
        city: str

    payloads = events_of(
        encode(
            new_stream(), [chunk({"content": '{"city":'}), chunk({"content": '"London"}'}, "stop")]
        )
    )
    final = accumulate(payloads, text_format=Capital)
    assert final.output_parsed == Capital(city="London")
