"""Unit tests for gateway.wire: the karta and openai wire profiles (pure bytes)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.sse import SSEEvent, SSEParser
from gateway.usage import Usage
from gateway.wire import PROFILES

KARTA = PROFILES["karta"]
OPENAI = PROFILES["openai"]
USAGE = Usage(input_tokens=42, output_tokens=28, cached_input_tokens=10, reasoning_tokens=4)

UPSTREAM_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-upstream123",
    "object": "chat.completion",
    "created": 1_717_250_400,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "We've got it.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    "system_fingerprint": "fp_x",
}

CHUNK: dict[str, Any] = {
    "id": "chatcmpl_abc",
    "object": "chat.completion.chunk",
    "created": 1_717_250_400,
    "model": "default",
    "choices": [{"index": 0, "delta": {"content": "We've got "}, "finish_reason": None}],
}


def _parse(raw: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    return parser.feed(raw) + parser.close()


def test_profiles_registry() -> None:
    assert set(PROFILES) == {"karta", "openai"}
    assert KARTA.name == "karta"
    assert OPENAI.name == "openai"


# --------------------------------------------------------------------------- unary


def test_karta_unary_body() -> None:
    original = copy.deepcopy(UPSTREAM_COMPLETION)
    body = KARTA.unary(UPSTREAM_COMPLETION, "chatcmpl_8a1d", "default", USAGE)
    assert original == UPSTREAM_COMPLETION  # the upstream's dict is not mutated
    assert body["id"] == "chatcmpl_8a1d"
    assert body["object"] == "text_completion"
    assert body["model"] == "default"
    assert body["created"] == 1_717_250_400
    assert body["choices"] == UPSTREAM_COMPLETION["choices"]
    assert body["usage"] == {
        "input_tokens": 42,
        "output_tokens": 28,
        "total_tokens": 70,
        "prompt_tokens": 42,
        "completion_tokens": 28,
        "prompt_tokens_details": {"cached_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }


def test_openai_unary_body() -> None:
    body = OPENAI.unary(UPSTREAM_COMPLETION, "chatcmpl_8a1d", "smart", USAGE)
    assert body["id"] == "chatcmpl_8a1d"
    assert body["object"] == "chat.completion"
    assert body["model"] == "smart"
    assert body["choices"] == UPSTREAM_COMPLETION["choices"]
    assert body["usage"] == {
        "prompt_tokens": 42,
        "completion_tokens": 28,
        "total_tokens": 70,
        "prompt_tokens_details": {"cached_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    assert "input_tokens" not in body["usage"]
    assert "output_tokens" not in body["usage"]


def test_unary_never_leaks_upstream_identity() -> None:
    for profile in (KARTA, OPENAI):
        body = profile.unary(UPSTREAM_COMPLETION, "chatcmpl_x", "default", USAGE)
        assert "chatcmpl-upstream123" not in json.dumps(body)
        assert "gpt-4o-mini-2024-07-18" not in json.dumps(body)


# --------------------------------------------------------------------------- chunks


def test_karta_chunk_framing() -> None:
    frame = KARTA.chunk(CHUNK)
    assert frame.startswith(b"event: chunk\ndata: {")
    assert frame.endswith(b"}\n\n")
    assert frame.count(b"\n") == 3
    [event] = _parse(frame)
    assert event.event == "chunk"
    assert json.loads(event.data) == CHUNK


def test_openai_chunk_framing() -> None:
    frame = OPENAI.chunk(CHUNK)
    assert frame.startswith(b"data: {")
    assert frame.endswith(b"}\n\n")
    assert frame.count(b"\n") == 2
    assert b"event:" not in frame
    [event] = _parse(frame)
    assert event.event is None
    assert json.loads(event.data) == CHUNK


@pytest.mark.parametrize("profile", [KARTA, OPENAI], ids=["karta", "openai"])
def test_chunk_with_newlines_in_content_stays_one_data_line(profile: Any) -> None:
    chunk = copy.deepcopy(CHUNK)
    chunk["choices"][0]["delta"]["content"] = "line 1\nline 2\r\n\u2028end"
    frame = profile.chunk(chunk)
    assert frame.count(b"\ndata: ") + frame.startswith(b"data: ") == 1
    [event] = _parse(frame)
    assert json.loads(event.data) == chunk


def test_frame_raw_bytes() -> None:
    assert KARTA.frame(b'{"a":1}') == b'event: chunk\ndata: {"a":1}\n\n'
    assert OPENAI.frame(b'{"a":1}') == b'data: {"a":1}\n\n'


# --------------------------------------------------------------------------- done


def test_done_frames() -> None:
    assert KARTA.done() == b"event: [DONE]\ndata: [DONE]\n\n"
    assert OPENAI.done() == b"data: [DONE]\n\n"
    [karta] = _parse(KARTA.done())
    assert (karta.event, karta.data) == ("[DONE]", b"[DONE]")
    [openai] = _parse(OPENAI.done())
    assert (openai.event, openai.data) == (None, b"[DONE]")


# --------------------------------------------------------------------------- usage chunk


def test_karta_usage_chunk() -> None:
    frame = KARTA.usage_chunk("chatcmpl_abc", 1_717_250_400, "default", USAGE)
    [event] = _parse(frame)
    assert event.event == "chunk"
    assert json.loads(event.data) == {
        "id": "chatcmpl_abc",
        "object": "chat.completion.chunk",
        "created": 1_717_250_400,
        "model": "default",
        "choices": [],
        "usage": {
            "input_tokens": 42,
            "output_tokens": 28,
            "total_tokens": 70,
            "prompt_tokens": 42,
            "completion_tokens": 28,
            "prompt_tokens_details": {"cached_tokens": 10},
            "completion_tokens_details": {"reasoning_tokens": 4},
        },
    }


def test_openai_usage_chunk() -> None:
    frame = OPENAI.usage_chunk("chatcmpl_abc", 1_717_250_400, "default", USAGE)
    assert frame.startswith(b"data: ")
    [event] = _parse(frame)
    assert event.event is None
    assert json.loads(event.data) == {
        "id": "chatcmpl_abc",
        "object": "chat.completion.chunk",
        "created": 1_717_250_400,
        "model": "default",
        "choices": [],
        "usage": {
            "prompt_tokens": 42,
            "completion_tokens": 28,
            "total_tokens": 70,
            "prompt_tokens_details": {"cached_tokens": 10},
            "completion_tokens_details": {"reasoning_tokens": 4},
        },
    }


# --------------------------------------------------------------------------- errors


def test_karta_error_event() -> None:
    frame = KARTA.error_event("upstream_error", "openai", "the provider stream ended early")
    assert frame.startswith(b"event: error\ndata: ")
    assert frame.endswith(b"\n\n")
    [event] = _parse(frame)
    assert event.event == "error"
    assert json.loads(event.data) == {
        "type": "error",
        "data": {
            "code": "upstream_error",
            "provider": "openai",
            "message": "the provider stream ended early",
        },
        "error": {
            "message": "the provider stream ended early",
            "type": "upstream_error",
            "code": "upstream_error",
        },
    }


def test_openai_error_frame() -> None:
    frame = OPENAI.error_event("upstream_timeout", "groq", "the provider stopped sending")
    assert frame.startswith(b"data: ")
    assert b"event:" not in frame
    [event] = _parse(frame)
    assert event.event is None
    data = json.loads(event.data)
    assert list(data) == ["error"]
    assert data["error"]["message"] == "the provider stopped sending"
    assert data["error"]["type"] == "upstream_timeout"
    assert data["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("profile", [KARTA, OPENAI], ids=["karta", "openai"])
def test_error_message_with_newlines_and_quotes_stays_one_event(profile: Any) -> None:
    message = 'Tool call failed:\r\n  "name" missing\n\nevent: chunk\ndata: [DONE]'
    frame = profile.error_event("upstream_error", "openai", message)
    [event] = _parse(frame)
    assert json.loads(event.data)["error"]["message"] == message


def test_stream_concatenation_parses_in_order() -> None:
    for profile in (KARTA, OPENAI):
        raw = (
            profile.chunk(CHUNK)
            + profile.usage_chunk("chatcmpl_abc", 1, "default", USAGE)
            + profile.done()
        )
        events = _parse(raw)
        assert len(events) == 3
        assert json.loads(events[0].data) == CHUNK
        assert json.loads(events[1].data)["choices"] == []
        assert events[2].data == b"[DONE]"
