"""Fuzz: whatever an upstream sends, the gateway fails only the documented way.

A provider (or anything answering at its URL) is untrusted input. Chunks and answers
of any shape, valid JSON with every field of the wrong type included, must end in
either a relayed chunk or the mid-stream error (UpstreamStreamError) for streams, and
in an answer or the gateway's own 502 (ValueError / UpstreamFailed) for unary calls:
never in an AttributeError that cuts a stream without an error event or answers 500.

Hypothesis generates the inputs (profile in tests/fuzz/conftest.py: a fixed seed in
CI, so a failure reproduces; ``HYPOTHESIS_PROFILE=deep`` for long local runs).
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.providers.anthropic import AnthropicStreamTranslator, translate_response
from gateway.providers.base import UpstreamStreamError
from gateway.providers.openai import OpenAIStreamTranslator, check_completion
from gateway.proxy import _Relay
from gateway.wire import PROFILES
from tests.support.strategies import choice_like, chunk_like, json_values, shaped, usage_like

# The attributes of a call the relay reads, and no more.
CALL: Any = types.SimpleNamespace(
    alias="default",
    first_token_at=None,
    chat=types.SimpleNamespace(include_usage=True, n=1),
    input_bound=100,
    output_ceiling=50,
)


def _openai_relay(frames: list[bytes], profile: str) -> None:
    translator = OpenAIStreamTranslator()
    relay = _Relay(CALL, "chatcmpl_fuzz", PROFILES[profile])
    try:
        for frame in [*frames, None]:
            batch = translator.feed(frame) if frame is not None else translator.close()
            relay.encode(batch)
            if translator.error is not None:
                raise translator.error
            if translator.done:
                break
    except UpstreamStreamError:
        return  # the documented failure: becomes the mid-stream error event
    relay.trailer()


@given(st.lists(chunk_like | json_values, max_size=6), st.sampled_from(["openai", "karta"]))
def test_any_openai_stream_relays_or_fails_as_a_stream_error(
    chunks: list[Any], profile: str
) -> None:
    frames = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    _openai_relay(frames, profile)


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_any_bytes_in_an_openai_stream_fail_as_a_stream_error(pieces: list[bytes]) -> None:
    _openai_relay(pieces, "karta")


event_like = shaped(
    {
        "type": st.sampled_from(
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "message_delta",
                "message_stop",
                "ping",
            ]
        ),
        "index": st.integers(0, 2),
        "message": shaped({"id": st.text(max_size=6), "usage": usage_like}),
        "content_block": shaped(
            {
                "type": st.sampled_from(["text", "tool_use"]),
                "text": st.text(max_size=6),
                "name": st.text(max_size=6),
                "input": json_values,
            }
        ),
        "delta": shaped(
            {
                "type": st.sampled_from(["text_delta", "input_json_delta"]),
                "text": st.text(max_size=6),
                "partial_json": st.text(max_size=6),
                "stop_reason": st.sampled_from(["end_turn", "tool_use", "max_tokens"]),
            }
        ),
        "usage": shaped({"output_tokens": st.integers(0, 10**6)}),
    }
)


@given(st.lists(event_like | json_values, max_size=8), st.booleans())
def test_any_anthropic_stream_translates_or_fails_as_a_stream_error(
    events: list[Any], json_answer: bool
) -> None:
    translator = AnthropicStreamTranslator(created=1, json_answer=json_answer)
    raw = b"".join(b"event: x\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
    with contextlib.suppress(UpstreamStreamError):  # the documented failure
        translator.feed(raw)
        translator.close()
        translator.check()


@given(
    shaped(
        {
            "content": st.lists(
                shaped(
                    {
                        "type": st.sampled_from(["text", "tool_use"]),
                        "text": st.text(max_size=6),
                        "name": st.text(max_size=6),
                        "input": json_values,
                    }
                ),
                max_size=3,
            ),
            "usage": shaped({"input_tokens": st.integers(0, 10**6)}),
            "stop_reason": st.text(max_size=8),
        }
    )
    | json_values,
    st.booleans(),
)
def test_any_anthropic_answer_translates_or_is_refused(message: Any, json_answer: bool) -> None:
    with contextlib.suppress(ValueError):  # the adapter answers 502: "an invalid answer"
        translate_response(message, created=1, json_answer=json_answer)


@given(shaped({"choices": st.lists(choice_like, max_size=3), "usage": usage_like}) | json_values)
def test_any_openai_answer_is_accepted_whole_or_refused(completion: Any) -> None:
    try:
        checked = check_completion(completion)
    except ValueError:
        return  # 502
    for choice in checked["choices"]:  # what the handler reads, without type checks
        message = choice.get("message") or {}
        str(message.get("content") or "")
