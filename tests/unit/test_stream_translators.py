"""The pure stream translators (gateway.providers.{openai,anthropic}.stream) on the
recorded provider streams (tests/data, copied from /work/shared/fixtures) and on the
quirks of compatible servers: chunks out without any usage member, the usage as a
typed Usage event wherever the provider put it, whatever the byte splits.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gateway.sse
from gateway.providers.anthropic import AnthropicStreamTranslator
from gateway.providers.base import StreamEvent, StreamTranslator, UpstreamStreamError
from gateway.providers.openai import OpenAIStreamTranslator, translate_response
from gateway.usage import Usage
from tests.support.upstream import chunk, sse

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
OPENAI_TEXT = (DATA_DIR / "openai_chat_text_include_usage.sse").read_bytes()
OPENAI_TOOL = (DATA_DIR / "openai_chat_tool_call_include_usage.sse").read_bytes()
GROQ_ERROR = (DATA_DIR / "openai_compat_groq_midstream_error_event.sse").read_bytes()
ANTHROPIC_TEXT = (DATA_DIR / "anthropic_messages_text_cache_usage.sse").read_bytes()
ANTHROPIC_TOOL = (DATA_DIR / "anthropic_messages_tool_use.sse").read_bytes()

Make = Callable[[], StreamTranslator]
FIXTURES: list[tuple[str, bytes, Make]] = [
    ("openai_text", OPENAI_TEXT, OpenAIStreamTranslator),
    ("openai_tool", OPENAI_TOOL, OpenAIStreamTranslator),
    ("groq_error", GROQ_ERROR, OpenAIStreamTranslator),
    ("anthropic_text", ANTHROPIC_TEXT, lambda: AnthropicStreamTranslator(created=1)),
    ("anthropic_tool", ANTHROPIC_TOOL, lambda: AnthropicStreamTranslator(created=1)),
]


class Outcome:
    """What a translator made of a whole body: its events, and how it ended."""

    def __init__(self, events: list[StreamEvent], error: UpstreamStreamError | None) -> None:
        self.events = events
        self.error = error

    def key(self) -> tuple[list[StreamEvent], tuple[str, str, bool] | None]:
        error = self.error
        return self.events, None if error is None else (error.code, error.message, error.declared)


def translate(make: Make, pieces: list[bytes]) -> Outcome:
    """Feed the pieces as the transport does: stop at the end marker or a failure, close
    at the end of the body."""
    translator = make()
    events: list[StreamEvent] = []
    for piece in [*pieces, None]:
        events += translator.feed(piece) if piece is not None else translator.close()
        if translator.error is not None or translator.done:
            break
    assert translator.done != (translator.error is not None), "the end, or a failure"
    return Outcome(events, translator.error)


def random_pieces(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, min(40, len(raw) - 1))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def chunks_of(events: list[StreamEvent]) -> list[dict[str, Any]]:
    return [e if isinstance(e, dict) else e[0] for e in events if isinstance(e, dict | tuple)]


def usages_of(events: list[StreamEvent]) -> list[Usage]:
    out = []
    for event in events:
        if isinstance(event, Usage):
            out.append(event)
        elif isinstance(event, tuple):
            out.append(event[1])
    return out


def text_of(events: list[StreamEvent]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for chunk in chunks_of(events)
        for choice in chunk["choices"]
    )


# --------------------------------------------------------------------------- recordings


@pytest.mark.parametrize(("name", "raw", "make"), FIXTURES, ids=[f[0] for f in FIXTURES])
def test_random_splits_give_the_same_events_and_usage(name: str, raw: bytes, make: Make) -> None:
    whole = translate(make, [raw])
    rng = random.Random(name)  # fixed per fixture: a failure reproduces
    for _ in range(150):
        pieces = random_pieces(raw, rng)
        assert translate(make, pieces).key() == whole.key(), [len(p) for p in pieces]
    at_a_time = translate(make, [raw[i : i + 1] for i in range(len(raw))])
    assert at_a_time.key() == whole.key()


def test_openai_text_recording() -> None:
    out = translate(OpenAIStreamTranslator, [OPENAI_TEXT])
    assert out.error is None
    *chunks, usage = out.events
    assert len(chunks) == 10  # the 11th chunk (choices: []) only carried the usage
    assert all(isinstance(c, dict) and c["choices"] and "usage" not in c for c in chunks)
    assert text_of(out.events) == "The capital of the UK is London."
    assert usage == Usage(input_tokens=78, output_tokens=9)
    # Everything else is relayed as sent (the relay re-stamps id, object, model).
    first = chunks[0]
    assert isinstance(first, dict)
    assert first["obfuscation"] == "HM7mrUsjk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}


def test_openai_tool_call_recording() -> None:
    out = translate(OpenAIStreamTranslator, [OPENAI_TOOL])
    assert out.error is None
    assert usages_of(out.events) == [Usage(input_tokens=53, output_tokens=15)]
    assert isinstance(out.events[-1], Usage)
    arguments = "".join(
        call["function"].get("arguments") or ""
        for c in chunks_of(out.events)
        for call in c["choices"][0]["delta"].get("tool_calls") or ()
    )
    assert arguments == '{"country":"UK"}'
    assert [c["choices"][0]["finish_reason"] for c in chunks_of(out.events)][-1] == "tool_calls"


def test_groq_error_recording_keeps_the_chunks_before_the_error() -> None:
    translator = OpenAIStreamTranslator(secret="gsk_" + "k" * 40)
    events = translator.feed(GROQ_ERROR)
    assert len(events) == 94
    assert all(isinstance(e, dict) for e in events)
    assert not usages_of(events)
    assert translator.error is not None
    assert translator.error.declared
    assert translator.error.message == "the provider reported an error (tool_use_failed)"
    with pytest.raises(UpstreamStreamError):
        translator.feed(b"data: [DONE]\n\n")
    with pytest.raises(UpstreamStreamError):
        translator.close()


def test_the_end_marker_ends_the_stream() -> None:
    translator = OpenAIStreamTranslator()
    events = translator.feed(sse(chunk("a", "stop"), "[DONE]", chunk("after")))
    assert translator.done
    assert text_of(events) == "a"
    assert translator.feed(sse(chunk("more"))) == []
    assert translator.close() == []


# --------------------------------------------------------------- where usage comes from


def test_groq_usage_on_the_finish_chunk_top_level_wins_over_x_groq() -> None:
    top = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    groq = {"prompt_tokens": 99, "completion_tokens": 99, "total_tokens": 198}
    finish = chunk(None, "stop", usage=top, x_groq={"id": "req_1", "usage": groq})
    out = translate(OpenAIStreamTranslator, [sse(chunk("Hi"), finish, "[DONE]")])
    plain, with_usage = out.events
    assert isinstance(plain, dict)
    assert isinstance(with_usage, tuple)
    relayed, usage = with_usage
    assert usage == Usage(input_tokens=11, output_tokens=7)
    assert "usage" not in relayed
    assert relayed["x_groq"] == {"id": "req_1"}  # the rest of the extension is relayed
    assert relayed["choices"][0]["finish_reason"] == "stop"


def test_older_groq_streams_report_usage_only_in_x_groq() -> None:
    groq = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    finish = chunk(None, "stop", x_groq={"id": "req_1", "usage": groq})
    out = translate(OpenAIStreamTranslator, [sse(finish, "[DONE]")])
    (event,) = out.events
    assert isinstance(event, tuple)
    assert event[1] == Usage(input_tokens=5, output_tokens=2)
    assert event[0]["x_groq"] == {"id": "req_1"}


def test_vllm_running_usage_on_every_chunk_then_a_usage_chunk() -> None:
    frames = [
        chunk(f"w{i} ", usage={"prompt_tokens": 11, "completion_tokens": i + 1}) for i in range(3)
    ]
    frames.append(chunk(None, "stop", usage={"prompt_tokens": 11, "completion_tokens": 3}))
    frames.append({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}})
    out = translate(OpenAIStreamTranslator, [sse(*frames, "[DONE]")])
    assert [type(e).__name__ for e in out.events] == ["tuple"] * 4 + ["Usage"]
    assert [u.output_tokens for u in usages_of(out.events)] == [1, 2, 3, 3, 3]
    assert all("usage" not in c for c in chunks_of(out.events))


def test_null_usage_members_are_dropped() -> None:
    out = translate(OpenAIStreamTranslator, [sse(chunk("a", usage=None), chunk(None, "stop"))])
    assert out.error is None  # no [DONE]: whole, since the choice finished
    assert all(isinstance(e, dict) and "usage" not in e for e in out.events)
    assert len(out.events) == 2


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": "11", "completion_tokens": 3},
        {"prompt_tokens": 11},
        {"prompt_tokens": 11, "completion_tokens": 10**13},
        "lots",
    ],
)
def test_a_usage_the_gateway_cannot_trust_is_no_usage(usage: Any) -> None:
    """Neither relayed nor counted (the meter then estimates, never below the truth);
    a chunk with choices is relayed without it."""
    raw = sse(chunk("a", usage=usage), {"choices": [], "usage": usage}, chunk(None, "stop"))
    out = translate(OpenAIStreamTranslator, [raw])
    assert not usages_of(out.events)
    assert [text_of([e]) for e in out.events] == ["a", ""]
    assert all(isinstance(e, dict) and "usage" not in e for e in out.events)


def test_a_chunk_without_choices_nor_usage_is_relayed() -> None:
    out = translate(OpenAIStreamTranslator, [sse({"choices": []}, chunk(None, "stop"))])
    assert out.events[0] == {"choices": []}


# --------------------------------------------------------------------------- failures


def test_a_body_that_ends_without_a_finish_was_cut() -> None:
    out = translate(OpenAIStreamTranslator, [sse(chunk("a"), chunk("b"))])
    assert text_of(out.events) == "ab"
    assert out.error is not None
    assert out.error.message == "the provider stream ended early"
    assert not out.error.declared


def test_a_null_error_member_is_no_error_and_named_events_are_chunks() -> None:
    raw = sse(chunk("a", error=None)) + sse(chunk("b", "stop"), event="chunk")
    out = translate(OpenAIStreamTranslator, [raw])
    assert out.error is None
    assert text_of(out.events) == "ab"


@pytest.mark.parametrize(
    ("frame", "message", "declared"),
    [
        (
            '{"error": {"code": "server_error"}}',
            "the provider reported an error (server_error)",
            True,
        ),
        ("[1, 2]", "the provider sent an invalid chunk", False),
        ('{"choices": {"index": 0}}', "the provider sent an invalid chunk", False),
        ('{"choices": [7]}', "the provider sent an invalid chunk", False),
        ('{"choices": [{"delta": "x"}]}', "the provider sent an invalid chunk", False),
        ("{nope", "the provider sent invalid JSON", False),
    ],
)
def test_a_failure_keeps_the_events_before_it(frame: str, message: str, declared: bool) -> None:
    translator = OpenAIStreamTranslator()
    events = translator.feed(sse(chunk("a"), frame, chunk("never")))
    assert text_of(events) == "a"
    assert translator.error is not None
    assert (translator.error.message, translator.error.declared) == (message, declared)
    with pytest.raises(UpstreamStreamError):
        translator.feed(b"")


def test_an_event_over_the_cap_fails_after_the_events_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway.sse, "MAX_EVENT_BYTES", 1024)
    translator = OpenAIStreamTranslator()
    events = translator.feed(sse(chunk("a")) + b"data: " + b"x" * 2048)
    assert text_of(events) == "a"
    assert translator.error is not None
    assert translator.error.message.startswith("the provider sent an SSE event over")


# --------------------------------------------------------------------------- unary


def test_a_unary_answer_gives_its_usage_typed_and_leaves_it_out() -> None:
    answer = {
        "id": "up",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    completion, usage = translate_response(answer)
    assert "usage" not in completion
    assert completion["choices"][0]["message"]["content"] == "Hi"
    assert usage == Usage(
        input_tokens=11, output_tokens=3, cached_input_tokens=4, reasoning_tokens=2
    )
    assert translate_response({"choices": []}) == ({"choices": []}, None)
    assert translate_response({"choices": [], "usage": {"prompt_tokens": -1}})[1] is None
    with pytest.raises(ValueError, match="not a chat completion"):
        translate_response({"choices": "no"})
