"""OpenAI Responses passed through natively (gateway.surfaces.native_responses): the
request rewrite, the stream relay on real recordings (tests/data, NATIVE_SOURCES.md) in
random byte splits, its meter signals, the scripted edge cases, and the unary answer."""

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
from gateway.surfaces.native_responses import (
    OUTPUT_DELTAS,
    NativeOut,
    NativeResponsesStream,
    native_unary,
    response_usage,
    rewrite_request,
)
from gateway.surfaces.responses import parse_request
from gateway.usage import Usage

DATA = Path(__file__).resolve().parent.parent / "data"
ALIAS = "fast"
Event = tuple[str | None, Any]


def parse(data: bytes) -> list[Event]:
    parser = SSEParser()
    return [(e.event, orjson.loads(e.data)) for e in parser.feed(data) + parser.close()]


def expected_relay(raw: bytes) -> list[Event]:
    """Every event as it came (named by its type), but each response object's model."""
    out: list[Event] = []
    for name, data in parse(raw):
        if isinstance(data.get("response"), dict):
            data = copy.deepcopy(data)
            data["response"]["model"] = ALIAS
        out.append((name or data["type"], data))
    return out


class Run:
    """A whole body fed to one stream: the bytes relayed and the signals summed."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.stream = NativeResponsesStream(ALIAS, secret="sk-proj-secretkey123")
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
    pieces: list[bytes] = []
    i = 0
    while i < len(raw):
        step = rng.choice([1, 2, 3, 7, 64, 97, 500, 4096])
        pieces.append(raw[i : i + step])
        i += step
    return pieces


def event(kind: str, **fields: Any) -> bytes:
    return encode_event(orjson.dumps({"type": kind, **fields}), kind)


def response(status: str = "in_progress", usage: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_upstream",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "gpt-5-2025-08-07",
        "output": [],
        "usage": usage,
        "store": False,
        **extra,
    }


USAGE = {
    "input_tokens": 100,
    "input_tokens_details": {"cached_tokens": 60},
    "output_tokens": 40,
    "output_tokens_details": {"reasoning_tokens": 25},
    "total_tokens": 140,
}
CREATED = event("response.created", sequence_number=0, response=response())
IN_PROGRESS = event("response.in_progress", sequence_number=1, response=response())
TEXT = (
    event(
        "response.output_item.added",
        output_index=0,
        item={"id": "msg_1", "type": "message", "role": "assistant", "content": []},
    )
    + event("response.output_text.delta", item_id="msg_1", output_index=0, delta="Hi")
    + event("response.output_text.delta", item_id="msg_1", output_index=0, delta="")
    + event("response.output_text.done", item_id="msg_1", output_index=0, text="Hi")
)
COMPLETED = event("response.completed", sequence_number=9, response=response("completed", USAGE))

# --------------------------------------------------------------------------- request


def test_rewrite_request_changes_only_model_and_max_output_tokens() -> None:
    body: dict[str, Any] = {
        "model": "fast",
        "input": "What is 100 * 200 / 3?",
        "instructions": "Be terse.",
        "max_output_tokens": 50000,
        "reasoning": {"effort": "low"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
        "previous_response_id": "resp_abc",
        "metadata": {"k": "v"},
        "stream": True,
        "tools": [
            {
                "type": "function",
                "name": "final_result",
                "parameters": {"type": "object", "properties": {}},
            }
        ],
        "tool_choice": "required",
    }
    parse_request(body)  # a valid body
    before = copy.deepcopy(body)
    out = rewrite_request(body, "gpt-5", 4096)
    assert body == before
    assert out == {**before, "model": "gpt-5", "max_output_tokens": 4096}
    without = {k: v for k, v in before.items() if k != "max_output_tokens"}
    assert rewrite_request(without, "gpt-5", 4096)["max_output_tokens"] == 4096


# --------------------------------------------------------------------------- recordings

RECORDED: dict[str, tuple[int, Usage]] = {
    "openai_responses_text_stream.sse": (7, Usage(input_tokens=278, output_tokens=9)),
    # The function_call item's announcement (its name) and 5 argument deltas.
    "openai_responses_function_call_stream.sse": (6, Usage(input_tokens=255, output_tokens=16)),
    # The encrypted reasoning item streams no delta; the call: 1 + 6.
    "openai_responses_reasoning_function_call_stream.sse": (
        7,
        Usage(input_tokens=53, output_tokens=469, reasoning_tokens=448),
    ),
    # 383 summary deltas and 271 text deltas.
    "openai_responses_reasoning_summary_stream.sse": (
        654,
        Usage(input_tokens=13, output_tokens=1680, reasoning_tokens=1408),
    ),
}


def counted_deltas(raw: bytes) -> int:
    total = 0
    for _, data in parse(raw):
        if data["type"] in OUTPUT_DELTAS:
            total += bool(data["delta"])
        elif data["type"] == "response.output_item.added":
            total += data["item"]["type"] == "function_call"
    return total


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_is_relayed_with_its_model_restamped(name: str) -> None:
    raw = (DATA / name).read_bytes()
    run = Run([raw])
    assert run.stream.error is None
    relayed = parse(run.data)
    assert relayed == expected_relay(raw)
    models = [data["response"]["model"] for _, data in relayed if "response" in data]
    assert models == [ALIAS] * 3  # created, in_progress, completed
    deltas, usage = RECORDED[name]
    assert run.deltas == deltas == counted_deltas(raw)
    assert run.last.finished
    assert run.last.done
    assert run.last.usage_final
    assert run.last.usage == usage


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_in_random_splits_gives_the_same_bytes_and_signals(name: str) -> None:
    raw = (DATA / name).read_bytes()
    whole = Run([raw])
    rng = random.Random(name)
    for _ in range(10 if len(raw) > 100_000 else 25):
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


def test_recorded_events_keep_their_bytes_and_the_response_keeps_its_id() -> None:
    raw = (DATA / "openai_responses_reasoning_function_call_stream.sse").read_bytes()
    parser = SSEParser()
    upstream = [e.data for e in parser.feed(raw) + parser.close()]
    relayed = [e.data for e in SSEParser().feed(Run([raw]).data)]
    assert relayed[2:-1] == upstream[2:-1]  # all but created, in_progress, completed
    final = orjson.loads(relayed[-1])["response"]
    want = orjson.loads(upstream[-1])["response"]
    assert final == {**want, "model": ALIAS}
    assert final["id"] == "resp_0050471a34b36ae60068c97b94a480819587a9d70cf2979b33"
    assert final["output"][0]["encrypted_content"].startswith("gAAAAABoyXvy")


# --------------------------------------------------------------------------- the start


def test_the_preamble_is_held_until_the_answer_begins() -> None:
    stream = NativeResponsesStream(ALIAS)
    held = stream.feed(CREATED + IN_PROGRESS)
    assert held.data == b""
    assert not stream.begun
    out = stream.feed(TEXT)
    assert stream.begun
    assert [name for name, _ in parse(out.data)] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
    ]
    assert out.deltas == 1  # the empty delta carries nothing


def test_a_failure_right_after_created_writes_nothing() -> None:
    stream = NativeResponsesStream(ALIAS)
    failed = response(
        "failed",
        USAGE,
        error={"code": "server_error", "message": "The server had an error, key sk-proj-X"},
    )
    out = stream.feed(CREATED + event("response.failed", response=failed) + TEXT)
    assert out.data == b""
    assert not stream.begun
    assert out.error is not None
    assert out.error is stream.error
    assert out.error.declared
    assert out.error.message == "the provider reported an error (server_error)"
    assert out.usage == response_usage(USAGE)  # what the failed response still consumed
    assert not out.usage_final
    assert not out.finished
    with pytest.raises(UpstreamStreamError) as raised:
        stream.feed(COMPLETED)
    assert raised.value is out.error
    with pytest.raises(UpstreamStreamError):
        stream.close()


def test_an_error_event_mid_stream_relays_what_came_before_it_and_not_itself() -> None:
    stream = NativeResponsesStream(ALIAS, secret="sk-proj-secretkey123")
    error = event(
        "error", code="rate_limit_exceeded", message="Slow down, sk-proj-secretkey123", param=None
    )
    out = stream.feed(CREATED + IN_PROGRESS + TEXT + error + COMPLETED)
    assert [name for name, _ in parse(out.data)][-1] == "response.output_text.done"
    assert out.error is not None
    assert out.error.declared
    assert out.error.message == "the provider reported an error (rate_limit_exceeded)"
    assert out.deltas == 1
    assert not out.finished


def test_an_error_with_an_error_member_and_a_code_resembling_the_key() -> None:
    stream = NativeResponsesStream(ALIAS, secret="sk-proj-secretkey123")
    stream.feed(CREATED + TEXT)
    out = stream.feed(b'event: error\ndata: {"error": {"code": "secretkey123"}}\n\n')
    assert out.data == b""
    assert out.error is not None
    assert out.error.declared
    assert out.error.message == "the provider reported an error"


@pytest.mark.parametrize(
    "bad",
    [
        b"data: {not json\n\n",
        b"data: 42\n\n",
        event("response.in_progress", response="busy"),
        event("response.completed", usage=USAGE),  # the response object missing
    ],
)
def test_an_unreadable_event_fails_the_stream_after_the_bytes_before_it(bad: bytes) -> None:
    stream = NativeResponsesStream(ALIAS)
    out = stream.feed(CREATED + TEXT + bad + COMPLETED)
    assert [name for name, _ in parse(out.data)][-1] == "response.output_text.done"
    assert out.error is not None
    assert not out.error.declared
    assert out.error.message.startswith("the provider sent ")
    assert not out.finished


def test_an_oversize_event_fails_the_stream_after_the_events_before_it() -> None:
    stream = NativeResponsesStream(ALIAS)
    huge = b'data: {"type":"response.output_text.delta","delta":"' + b"x" * MAX_EVENT_BYTES
    out = stream.feed(CREATED + TEXT + huge)
    assert [name for name, _ in parse(out.data)][-1] == "response.output_text.done"
    assert out.error is not None
    assert "over" in out.error.message


# --------------------------------------------------------------------------- the end


def test_incomplete_finishes_with_its_usage() -> None:
    incomplete = response("incomplete", USAGE, incomplete_details={"reason": "max_output_tokens"})
    run = Run([CREATED + TEXT + event("response.incomplete", response=incomplete)])
    assert run.last.finished
    assert run.last.done
    assert run.last.usage_final
    assert run.last.usage == Usage(
        input_tokens=100, output_tokens=40, cached_input_tokens=60, reasoning_tokens=25
    )
    assert parse(run.data)[-1][1]["response"]["model"] == ALIAS


def test_a_body_cut_before_the_end_fails_at_close() -> None:
    stream = NativeResponsesStream(ALIAS)
    assert stream.feed(CREATED + TEXT).error is None
    end = stream.close()
    assert end.error is not None
    assert not end.error.declared
    assert end.error.message == "the provider stream ended early"
    assert end.usage is None


def test_nothing_after_completed_is_read() -> None:
    stream = NativeResponsesStream(ALIAS)
    out = stream.feed(CREATED + TEXT + COMPLETED + TEXT + b"data: {bad\n\n")
    assert out.done
    assert out.error is None
    assert parse(out.data)[-1][0] == "response.completed"
    assert stream.feed(TEXT).data == b""
    assert stream.close().error is None


def test_a_done_marker_is_not_relayed() -> None:
    run = Run([CREATED + TEXT + b"data: [DONE]\n\n" + COMPLETED])
    assert b"[DONE]" not in run.data
    assert run.last.done


def test_a_final_usage_the_gateway_cannot_trust_is_none() -> None:
    bad = {**USAGE, "output_tokens": -3}
    run = Run([CREATED + TEXT + event("response.completed", response=response("completed", bad))])
    assert run.last.finished
    assert run.last.usage is None
    assert not run.last.usage_final


def test_every_output_delta_counts_and_call_items_count_once() -> None:
    body = CREATED + b"".join(
        event(kind, item_id="x", output_index=0, delta="d") for kind in sorted(OUTPUT_DELTAS)
    )
    body += event(
        "response.output_item.added",
        output_index=1,
        item={"type": "function_call", "name": "f", "arguments": "", "call_id": "c"},
    )
    body += event("response.output_item.added", output_index=2, item={"type": "reasoning"})
    body += event("response.some_future_event", payload={"a": [1, 2.5]})
    run = Run([body + COMPLETED])
    assert run.deltas == len(OUTPUT_DELTAS) + 1
    assert parse(run.data) == expected_relay(body + COMPLETED)


def test_events_without_a_name_are_named_by_their_type() -> None:
    named = CREATED + TEXT + COMPLETED
    raw = b"".join(encode_event(orjson.dumps(data)) for _, data in parse(named))
    run = Run([raw])
    assert parse(run.data) == expected_relay(named)


# --------------------------------------------------------------------------- usage


def test_response_usage_details_and_their_bounds() -> None:
    assert response_usage(USAGE) == Usage(100, 40, cached_input_tokens=60, reasoning_tokens=25)
    writes = {**USAGE, "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30}}
    assert response_usage(writes) == Usage(
        100, 40, cached_input_tokens=60, reasoning_tokens=25, cache_creation_input_tokens=30
    )
    wild = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 50},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 9},
    }
    assert response_usage(wild) == Usage(10, 5, cached_input_tokens=10, reasoning_tokens=5)
    odd = {"input_tokens": 10, "output_tokens": 5, "input_tokens_details": "x"}
    assert response_usage(odd) == Usage(10, 5)


@pytest.mark.parametrize(
    "usage",
    [
        None,
        [],
        {"input_tokens": 10},
        {"input_tokens": True, "output_tokens": 1},
        {"input_tokens": 10**12 + 1, "output_tokens": 1},
        {"input_tokens": 1, "output_tokens": 2.0},
    ],
)
def test_response_usage_refuses_untrustworthy_counts(usage: Any) -> None:
    assert response_usage(usage) is None


# --------------------------------------------------------------------------- unary


@pytest.mark.parametrize(
    ("name", "usage"),
    [
        ("openai_response_cached_unary.json", Usage(4020, 5, cached_input_tokens=4012)),
        (
            "openai_response_reasoning_function_call_unary.json",
            Usage(40, 148, reasoning_tokens=128),
        ),
    ],
)
def test_native_unary_on_a_recorded_response(name: str, usage: Usage) -> None:
    upstream = json.loads((DATA / name).read_text())
    before = copy.deepcopy(upstream)
    out, found = native_unary(upstream, ALIAS)
    assert upstream == before
    assert out == {**before, "model": ALIAS}
    assert found == usage


def test_native_unary_without_usage() -> None:
    assert native_unary(response("completed"), ALIAS)[1] is None


@pytest.mark.parametrize("bad", [None, "x", {"object": "response"}, {"output": {}}])
def test_native_unary_refuses_what_is_no_response(bad: Any) -> None:
    with pytest.raises(ValueError, match="not a Responses response"):
        native_unary(bad, ALIAS)
