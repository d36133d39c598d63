"""What the client gets back (DESIGN section 2): unary answers and streams in each
wire profile, recorded provider streams relayed chunk for chunk, failures mid-stream
as an error event.

Streamed answers are parsed with the gateway's own SSE parser, frame by frame.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.sse import SSEEvent
from tests.support.harness import PROVIDER_KEY, Gateway, GatewayFactory, chat_body, post_chat
from tests.support.sse import content_of, parse_sse, stream_events
from tests.support.upstream import FakeUpstream, Reply, fixture, openai_completion, openai_stream

TEXT_FIXTURE = "openai_chat_text_include_usage.sse"
TOOL_FIXTURE = "openai_chat_tool_call_include_usage.sse"
GROQ_FIXTURE = "openai_compat_groq_midstream_error_event.sse"


def assert_chunk(chunk: dict[str, Any], alias: str = "default") -> None:
    """A complete OpenAI chunk object, re-stamped by the gateway."""
    assert isinstance(chunk["id"], str)
    assert chunk["id"].startswith("chatcmpl_")
    assert chunk["object"] == "chat.completion.chunk"
    assert isinstance(chunk["created"], int)
    assert chunk["model"] == alias
    assert isinstance(chunk["choices"], list)
    for choice in chunk["choices"]:
        assert {"index", "delta", "finish_reason"} <= set(choice), choice


def karta_chunks(events: list[SSEEvent]) -> list[dict[str, Any]]:
    """Karta profile: every frame but the last is ``event: chunk``; the last is [DONE]."""
    assert events, "empty stream"
    assert (events[-1].event, events[-1].data) == ("[DONE]", b"[DONE]")
    body = events[:-1]
    assert all(e.event == "chunk" for e in body), [e.event for e in body]
    chunks = [json.loads(e.data) for e in body]
    for chunk in chunks:
        assert_chunk(chunk)
    assert len({c["id"] for c in chunks}) == 1, "one id for the whole stream"
    return chunks


def openai_chunks(events: list[SSEEvent]) -> list[dict[str, Any]]:
    """OpenAI profile: data-only frames, the last is ``data: [DONE]``."""
    assert events, "empty stream"
    assert all(e.event is None for e in events), [e.event for e in events]
    assert events[-1].data == b"[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    for chunk in chunks:
        assert_chunk(chunk)
    return chunks


def upstream_chunks(name: str) -> list[dict[str, Any]]:
    """The JSON chunks of a recorded fixture (no [DONE], no error frames)."""
    return [
        json.loads(e.data)
        for e in parse_sse(fixture(name))
        if e.event is None and e.data != b"[DONE]"
    ]


# --------------------------------------------------------------------------- unary answers


async def test_unary_karta_response(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    upstream.script(
        Reply(
            json=openai_completion(
                "Forty-two.", model="gpt-4o-mini-2024-07-18", prompt_tokens=21, completion_tokens=7
            )
        )
    )
    resp = await post_chat(client, creds, chat_body())
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["object"] == "text_completion"
    assert body["model"] == "default"
    assert body["id"].startswith("chatcmpl_")
    assert isinstance(body["created"], int)
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Forty-two.",
        "refusal": None,
        "annotations": [],
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["input_tokens"] == 21
    assert usage["output_tokens"] == 7
    assert usage["total_tokens"] == 28
    assert usage["prompt_tokens"] == 21
    assert usage["completion_tokens"] == 7
    assert "gpt-4o-mini" not in await resp.text()  # never the provider's model name


async def test_unary_openai_profile_response(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(json=openai_completion("Hi.", prompt_tokens=21, completion_tokens=7)))
    resp = await post_chat(client, creds, chat_body(), project="beta")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "default"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 21
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == 28
    assert "input_tokens" not in usage
    assert "output_tokens" not in usage


# --------------------------------------------------------------------------- streamed answers


async def test_stream_karta_frames_without_usage(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hel", "lo"], prompt_tokens=21, completion_tokens=5)))
    resp = await post_chat(client, creds, chat_body(stream=True))
    raw, events = await stream_events(resp)
    assert raw.endswith(b"event: [DONE]\ndata: [DONE]\n\n")
    chunks = karta_chunks(events)
    assert content_of(chunks) == "Hello"
    assert all(c["choices"] for c in chunks), "no usage chunk when the client did not ask"
    assert all(c.get("usage") is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The gateway asked upstream for usage anyway (and kept it to itself).
    assert upstream.last.json()["stream_options"]["include_usage"] is True


async def test_stream_karta_usage_chunk_when_asked(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hel", "lo"], prompt_tokens=21, completion_tokens=5)))
    resp = await post_chat(
        client, creds, chat_body(stream=True, stream_options={"include_usage": True})
    )
    _, events = await stream_events(resp)
    chunks = karta_chunks(events)
    usage_chunks = [c for c in chunks if c.get("usage") is not None]
    assert len(usage_chunks) == 1
    final = chunks[-1]
    assert final is usage_chunks[0], "the usage chunk is the last before [DONE]"
    assert final["choices"] == []
    usage = final["usage"]
    assert usage["input_tokens"] == 21
    assert usage["output_tokens"] == 5
    assert usage["total_tokens"] == 26
    assert usage["prompt_tokens"] == 21
    assert usage["completion_tokens"] == 5
    assert all(c["choices"] for c in chunks[:-1])
    assert content_of(chunks) == "Hello"


async def test_stream_openai_profile_is_data_only(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hel", "lo"], prompt_tokens=21, completion_tokens=5)))
    resp = await post_chat(
        client,
        creds,
        chat_body(stream=True, stream_options={"include_usage": True}),
        project="beta",
    )
    raw, events = await stream_events(resp)
    assert b"event:" not in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = openai_chunks(events)
    assert content_of(chunks) == "Hello"
    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == 21
    assert final["usage"]["completion_tokens"] == 5
    assert final["usage"]["total_tokens"] == 26
    assert "input_tokens" not in final["usage"]


async def test_recorded_openai_text_stream_is_relayed(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(TEXT_FIXTURE)))
    resp = await post_chat(
        client, creds, chat_body(stream=True, stream_options={"include_usage": True})
    )
    _, events = await stream_events(resp)
    chunks = karta_chunks(events)
    assert content_of(chunks) == "The capital of the UK is London."
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["stop"]
    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"]["input_tokens"] == 78
    assert final["usage"]["output_tokens"] == 9
    assert final["usage"]["total_tokens"] == 87
    assert final["usage"]["prompt_tokens"] == 78
    assert final["usage"]["completion_tokens"] == 9
    # Every content chunk of the recording, and nothing else, reached the client.
    recorded = [c for c in upstream_chunks(TEXT_FIXTURE) if c["choices"]]
    assert [c["choices"] for c in chunks[:-1]] == [c["choices"] for c in recorded]


async def test_recorded_tool_call_stream_is_relayed_unchanged(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(TOOL_FIXTURE)))
    resp = await post_chat(
        client, creds, chat_body(stream=True, stream_options={"include_usage": True})
    )
    _, events = await stream_events(resp)
    chunks = karta_chunks(events)
    recorded = [c for c in upstream_chunks(TOOL_FIXTURE) if c["choices"]]
    relayed = [c for c in chunks if c["choices"]]
    # tool_calls deltas pass through unchanged, chunk for chunk
    assert [c["choices"] for c in relayed] == [c["choices"] for c in recorded]
    calls = [
        call for c in relayed for ch in c["choices"] for call in ch["delta"].get("tool_calls") or ()
    ]
    assert calls[0]["id"] == "call_ZR5UUuTt3pf61kjwAJIYdVMj"
    assert calls[0]["function"]["name"] == "get_capital"
    arguments = "".join(call["function"].get("arguments") or "" for call in calls)
    assert json.loads(arguments) == {"country": "UK"}
    assert arguments == '{"country":"UK"}'
    finishes = [ch["finish_reason"] for c in relayed for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["input_tokens"] == 53
    assert chunks[-1]["usage"]["output_tokens"] == 15
    assert chunks[-1]["usage"]["total_tokens"] == 68


async def test_recorded_midstream_error_becomes_an_error_event(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(GROQ_FIXTURE)))
    resp = await post_chat(client, creds, chat_body(stream=True))
    raw, events = await stream_events(resp)
    assert b"[DONE]" not in raw
    assert events[-1].event == "error"
    body = events[:-1]
    assert all(e.event == "chunk" for e in body), [e.event for e in body]
    chunks = [json.loads(e.data) for e in body]
    for chunk in chunks:
        assert_chunk(chunk)
    recorded = upstream_chunks(GROQ_FIXTURE)
    assert len(recorded) == 94
    assert [c["choices"] for c in chunks] == [c["choices"] for c in recorded]

    error = json.loads(events[-1].data)
    assert error["type"] == "error"
    assert error["data"]["code"] == "upstream_error"
    assert error["data"]["provider"] == "upstream"
    assert isinstance(error["data"]["message"], str)
    assert isinstance(error["error"], dict)
    assert isinstance(error["error"]["message"], str)
    assert error["error"]["code"] == "upstream_error"
    assert PROVIDER_KEY not in raw.decode()


@pytest.mark.parametrize(
    "bad",
    [{"choices": [None]}, {"choices": "text"}, {"choices": [{"delta": ["x"]}]}],
    ids=["choice-null", "choices-string", "delta-list"],
)
async def test_a_malformed_chunk_mid_stream_becomes_an_error_event(
    gateway: Gateway, upstream: FakeUpstream, bad: dict[str, Any]
) -> None:
    """Found by the fuzz suite: a chunk of the wrong shape crashed the relay, which cut
    the stream with no error event. It is the provider's error, told as such."""
    client, _, creds = gateway
    good = openai_stream(["Hel", "lo"]).split(b"\n\n")
    sse = b"\n\n".join([good[0], good[1], b"data: " + json.dumps(bad).encode(), *good[2:]])
    upstream.script(Reply(sse=sse))
    resp = await post_chat(client, creds, chat_body(stream=True))
    assert resp.status == 200
    raw, events = await stream_events(resp)
    assert events[-1].event == "error", raw
    error = json.loads(events[-1].data)
    assert error["data"]["code"] == "upstream_error"
    assert "invalid chunk" in error["data"]["message"]
    assert all(e.event == "chunk" for e in events[:-1])
    assert content_of([json.loads(e.data) for e in events[:-1]]) == "Hel"


async def test_openai_profile_midstream_error_is_a_data_only_error_frame(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(GROQ_FIXTURE)))
    resp = await post_chat(client, creds, chat_body(stream=True), project="beta")
    raw, events = await stream_events(resp)
    assert b"event:" not in raw
    assert b"[DONE]" not in raw
    assert all(e.event is None for e in events)
    chunks = [json.loads(e.data) for e in events]
    error = chunks.pop()
    assert len(chunks) == 94
    for chunk in chunks:
        assert_chunk(chunk)
    assert isinstance(error["error"], dict)
    assert isinstance(error["error"]["message"], str)
    assert error["error"]["code"] == "upstream_error"


async def test_upstream_cut_mid_stream_becomes_an_error_event(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    sse = openai_stream(["one ", "two ", "three ", "four"], prompt_tokens=21, completion_tokens=5)
    first_frame_end = sse.index(b"\n\n") + 2
    # Two whole frames reach the gateway, then the TCP connection drops.
    cut = sse.index(b"\n\n", first_frame_end) + 2
    upstream.script(Reply(sse=sse, cut_after_bytes=cut, slice_size=cut))
    resp = await post_chat(client, creds, chat_body(stream=True))
    raw, events = await stream_events(resp)
    assert b"[DONE]" not in raw
    assert events[-1].event == "error"
    assert [e.event for e in events[:-1]] == ["chunk", "chunk"]
    error = json.loads(events[-1].data)
    assert error["data"]["code"] == "upstream_error"
    assert "error" in error


async def test_upstream_stall_mid_stream_becomes_an_error_event(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={
            "providers": {
                "upstream": {
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key_env": "TEST_PROVIDER_KEY",
                    "timeouts": {"connect": 2, "first_byte": 2, "idle": 0.3, "total": 10},
                }
            }
        }
    )
    sse = openai_stream(["one ", "two ", "three ", "four"])
    stall = sse.index(b"\n\n", sse.index(b"\n\n") + 2) + 2
    upstream.script(Reply(sse=sse, hang_after_bytes=stall, slice_size=stall))
    resp = await post_chat(client, creds, chat_body(stream=True))
    raw, events = await stream_events(resp)
    assert b"[DONE]" not in raw
    assert events[-1].event == "error"
    assert [e.event for e in events[:-1]] == ["chunk", "chunk"]
    error = json.loads(events[-1].data)
    assert error["data"]["code"] in {"upstream_timeout", "upstream_error"}
    assert "error" in error
    await upstream.wait_disconnect()  # the gateway let go of the stalled upstream
