"""What the upstream receives, and what the client gets back (DESIGN sections 2 and 6).

The fake upstream records every request it gets over TCP; streamed answers are parsed
with the gateway's own SSE parser, frame by frame.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gateway.sse import SSEEvent
from tests.support.harness import BYOK_KEY, PROVIDER_KEY, Credentials, bearer, chat_body, chat_url
from tests.support.sse import content_of, parse_sse
from tests.support.upstream import Reply, fixture, openai_completion, openai_stream

PROJECT_MAX_OUTPUT = 100  # harness: every project has max_output_tokens 100
TEXT_FIXTURE = "openai_chat_text_include_usage.sse"
TOOL_FIXTURE = "openai_chat_tool_call_include_usage.sse"
GROQ_FIXTURE = "openai_compat_groq_midstream_error_event.sse"


async def post(client: Any, creds: Credentials, body: dict[str, Any], project: str = "alpha"):
    return await client.post(chat_url(project), json=body, headers=bearer(creds.key))


async def stream_events(resp: Any) -> tuple[bytes, list[SSEEvent]]:
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    raw = await resp.read()
    return raw, parse_sse(raw)


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


# --------------------------------------------------------------------------- the request upstream


@pytest.mark.parametrize(
    ("alias", "upstream_model"), [("default", "gpt-4o-mini"), ("smart", "gpt-4o")]
)
async def test_model_is_rewritten_to_the_routes_model(
    gateway, upstream, alias: str, upstream_model: str
) -> None:
    client, _, creds = gateway
    resp = await post(client, creds, chat_body(model=alias))
    assert resp.status == 200, await resp.text()
    assert upstream.last.json()["model"] == upstream_model
    assert (await resp.json())["model"] == alias


async def test_model_defaults_to_the_projects_default_alias(gateway, upstream) -> None:
    client, _, creds = gateway
    resp = await post(client, creds, chat_body())
    assert resp.status == 200, await resp.text()
    assert upstream.last.json()["model"] == "gpt-4o-mini"
    assert upstream.last.path == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ({"max_completion_tokens": 5000}, {"max_completion_tokens": PROJECT_MAX_OUTPUT}),
        ({"max_completion_tokens": 10}, {"max_completion_tokens": 10}),
        ({}, {"max_completion_tokens": PROJECT_MAX_OUTPUT}),
        # Sent under the provider's name (here the default), whichever the client used.
        ({"max_tokens": 5000}, {"max_completion_tokens": PROJECT_MAX_OUTPUT}),
        ({"max_tokens": 10}, {"max_completion_tokens": 10}),
    ],
    ids=["mct_clamped", "mct_kept", "absent_set", "max_tokens_clamped", "max_tokens_kept"],
)
async def test_max_tokens_clamped_to_the_project_ceiling(
    gateway, upstream, asked: dict[str, int], expected: dict[str, int]
) -> None:
    client, _, creds = gateway
    resp = await post(client, creds, chat_body(**asked))
    assert resp.status == 200, await resp.text()
    sent = upstream.last.json()
    got = {k: sent[k] for k in ("max_tokens", "max_completion_tokens") if k in sent}
    assert got == expected


async def test_max_tokens_clamped_on_stream_requests_too(gateway, upstream) -> None:
    client, _, creds = gateway
    resp = await post(client, creds, chat_body(stream=True, max_tokens=5000))
    await stream_events(resp)
    sent = upstream.last.json()
    assert sent["max_completion_tokens"] == PROJECT_MAX_OUTPUT
    assert "max_tokens" not in sent


@pytest.mark.parametrize(
    "options",
    [None, {}, {"include_usage": False}, {"include_usage": True}],
    ids=["absent", "empty", "false", "true"],
)
async def test_stream_requests_always_ask_for_usage(
    gateway, upstream, options: dict[str, Any] | None
) -> None:
    client, _, creds = gateway
    extra: dict[str, Any] = {"stream": True}
    if options is not None:
        extra["stream_options"] = options
    resp = await post(client, creds, chat_body(**extra))
    await stream_events(resp)
    sent = upstream.last.json()
    assert sent["stream"] is True
    assert sent["stream_options"]["include_usage"] is True


@pytest.mark.parametrize(
    "extra",
    [{}, {"stream": False}, {"stream_options": {"include_usage": True}}],
    ids=["plain", "stream_false", "client_stream_options"],
)
async def test_unary_requests_do_not_get_stream_options(
    gateway, upstream, extra: dict[str, Any]
) -> None:
    client, _, creds = gateway
    resp = await post(client, creds, chat_body(**extra))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    sent = upstream.last.json()
    assert "stream_options" not in sent  # OpenAI rejects stream_options without stream
    assert sent.get("stream") in (None, False)


async def test_client_credentials_and_cookies_are_not_forwarded(gateway, upstream) -> None:
    client, _, creds = gateway
    resp = await client.post(
        chat_url("alpha"),
        json=chat_body(),
        headers={
            **bearer(creds.key),
            "Cookie": "session=client-cookie-value",
            "Proxy-Authorization": "Basic Y2xpZW50OnNlY3JldA==",
        },
    )
    assert resp.status == 200, await resp.text()
    rec = upstream.last
    assert rec.header("Authorization") == f"Bearer {PROVIDER_KEY}"
    assert rec.header("Cookie") is None
    assert rec.header("Proxy-Authorization") is None
    for name, value in rec.headers.items():
        assert creds.key not in value, name
        assert "client-cookie-value" not in value, name
    assert creds.key.encode() not in rec.body


async def test_cookies_a_provider_sets_are_not_sent_back_on_any_call(
    make_gateway, upstream
) -> None:
    """One upstream session serves every project: a cookie set in an answer to one
    project (as load balancers in front of providers do) must not ride along on the
    next call, of that project or another."""
    # By host name: a cookie jar would refuse cookies from a bare IP address anyway.
    by_name = {
        "kind": "openai",
        "base_url": upstream.base_url.replace("127.0.0.1", "localhost"),
        "api_key_env": "TEST_PROVIDER_KEY",
        "timeouts": {"connect": 2, "first_byte": 2, "idle": 2, "total": 10},
    }
    client, _, creds = await make_gateway(gateway={"providers": {"upstream": by_name}})
    upstream.script(
        Reply(
            json=openai_completion(),
            headers={"Set-Cookie": "lb_affinity=set-for-alpha; Path=/; Max-Age=3600"},
        )
    )
    assert (await post(client, creds, chat_body())).status == 200
    for project in ("alpha", "beta"):
        resp = await post(client, creds, chat_body(), project=project)
        assert resp.status == 200, await resp.text()
        assert upstream.last.header("Cookie") is None, project
    assert len(upstream.requests) == 3


async def test_a_finished_stream_hands_its_connection_back_for_the_next_call(
    gateway, upstream
) -> None:
    """Providers end the body a moment after [DONE] (the last chunk of the chunked
    encoding comes in its own packet). The stream is finished at [DONE], and its
    connection must still go back to the pool: a new one to a provider costs a TLS
    handshake on the next call."""
    client, _, creds = gateway
    for _ in range(3):
        upstream.script(Reply(sse=openai_stream(["Hel", "lo"]), delay_before_end=0.05))
        resp = await post(client, creds, chat_body(stream=True))
        raw, _ = await stream_events(resp)
        assert raw.endswith(b"event: [DONE]\ndata: [DONE]\n\n")
    peers = [rec.peer for rec in upstream.requests]
    assert len(peers) == 3
    assert peers[0] is not None
    assert peers[1] == peers[0]
    assert peers[2] == peers[0]


async def test_a_body_left_open_after_the_last_event_is_dropped_soon(gateway, upstream) -> None:
    """The wait for the body's end is short: an upstream that keeps it open after
    [DONE] does not hold the client's stream, and its connection is not reused."""
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hi"]), delay_before_end=3.0))
    started = time.monotonic()
    raw, _ = await stream_events(await post(client, creds, chat_body(stream=True)))
    assert raw.endswith(b"event: [DONE]\ndata: [DONE]\n\n")
    assert time.monotonic() - started < 1.5  # the drain gives up after 0.25 s
    await upstream.wait_disconnect()
    assert (await post(client, creds, chat_body())).status == 200
    assert upstream.requests[1].peer != upstream.requests[0].peer


async def test_project_owned_provider_key_is_sent_instead_of_the_gateways(
    make_gateway, upstream
) -> None:
    client, _, creds = await make_gateway(
        projects={"alpha": {"provider_keys": {"upstream": "TEST_BYOK_KEY"}}}
    )
    resp = await post(client, creds, chat_body())
    assert resp.status == 200, await resp.text()
    assert upstream.last.header("Authorization") == f"Bearer {BYOK_KEY}"
    resp = await post(client, creds, chat_body(), project="beta")
    assert resp.status == 200, await resp.text()
    assert upstream.last.header("Authorization") == f"Bearer {PROVIDER_KEY}"


async def test_session_token_is_not_forwarded(gateway, upstream) -> None:
    client, _, creds = gateway
    token = creds.session("alpha")
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    assert resp.status == 200, await resp.text()
    rec = upstream.last
    assert rec.header("Authorization") == f"Bearer {PROVIDER_KEY}"
    assert all(token not in value for value in rec.headers.values())


async def test_understood_parameters_pass_through(gateway, upstream) -> None:
    """Parameters the gateway understands reach the provider as sent (unknown ones are
    refused: tests/integration/test_forwarded_fields.py)."""
    client, _, creds = gateway
    extra = {
        "seed": 42,
        "reasoning_effort": "low",
        "temperature": 0.3,
        "stop": ["\n\n"],
        "user": "end-user-7",
        "response_format": {"type": "json_object"},
    }
    body = chat_body("What is 2+2?", **extra)
    resp = await post(client, creds, body)
    assert resp.status == 200, await resp.text()
    sent = upstream.last.json()
    for key, value in extra.items():
        assert sent[key] == value, key
    assert sent["messages"] == body["messages"]


# --------------------------------------------------------------------------- unary answers


async def test_unary_karta_response(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(
        Reply(
            json=openai_completion(
                "Forty-two.", model="gpt-4o-mini-2024-07-18", prompt_tokens=21, completion_tokens=7
            )
        )
    )
    resp = await post(client, creds, chat_body())
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


async def test_unary_openai_profile_response(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(json=openai_completion("Hi.", prompt_tokens=21, completion_tokens=7)))
    resp = await post(client, creds, chat_body(), project="beta")
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


async def test_stream_karta_frames_without_usage(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hel", "lo"], prompt_tokens=21, completion_tokens=5)))
    resp = await post(client, creds, chat_body(stream=True))
    raw, events = await stream_events(resp)
    assert raw.endswith(b"event: [DONE]\ndata: [DONE]\n\n")
    chunks = karta_chunks(events)
    assert content_of(chunks) == "Hello"
    assert all(c["choices"] for c in chunks), "no usage chunk when the client did not ask"
    assert all(c.get("usage") is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The gateway asked upstream for usage anyway (and kept it to itself).
    assert upstream.last.json()["stream_options"]["include_usage"] is True


async def test_stream_karta_usage_chunk_when_asked(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hel", "lo"], prompt_tokens=21, completion_tokens=5)))
    resp = await post(client, creds, chat_body(stream=True, stream_options={"include_usage": True}))
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


async def test_stream_openai_profile_is_data_only(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hel", "lo"], prompt_tokens=21, completion_tokens=5)))
    resp = await post(
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


async def test_recorded_openai_text_stream_is_relayed(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(TEXT_FIXTURE)))
    resp = await post(client, creds, chat_body(stream=True, stream_options={"include_usage": True}))
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


async def test_recorded_tool_call_stream_is_relayed_unchanged(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(TOOL_FIXTURE)))
    resp = await post(client, creds, chat_body(stream=True, stream_options={"include_usage": True}))
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


async def test_recorded_midstream_error_becomes_an_error_event(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(GROQ_FIXTURE)))
    resp = await post(client, creds, chat_body(stream=True))
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
    gateway, upstream, bad: dict[str, Any]
) -> None:
    """Found by the fuzz suite: a chunk of the wrong shape crashed the relay, which cut
    the stream with no error event. It is the provider's error, told as such."""
    client, _, creds = gateway
    good = openai_stream(["Hel", "lo"]).split(b"\n\n")
    sse = b"\n\n".join([good[0], good[1], b"data: " + json.dumps(bad).encode(), *good[2:]])
    upstream.script(Reply(sse=sse))
    resp = await post(client, creds, chat_body(stream=True))
    assert resp.status == 200
    raw, events = await stream_events(resp)
    assert events[-1].event == "error", raw
    error = json.loads(events[-1].data)
    assert error["data"]["code"] == "upstream_error"
    assert "invalid chunk" in error["data"]["message"]
    assert all(e.event == "chunk" for e in events[:-1])
    assert content_of([json.loads(e.data) for e in events[:-1]]) == "Hel"


async def test_openai_profile_midstream_error_is_a_data_only_error_frame(gateway, upstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=fixture(GROQ_FIXTURE)))
    resp = await post(client, creds, chat_body(stream=True), project="beta")
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


async def test_upstream_cut_mid_stream_becomes_an_error_event(gateway, upstream) -> None:
    client, _, creds = gateway
    sse = openai_stream(["one ", "two ", "three ", "four"], prompt_tokens=21, completion_tokens=5)
    first_frame_end = sse.index(b"\n\n") + 2
    # Two whole frames reach the gateway, then the TCP connection drops.
    cut = sse.index(b"\n\n", first_frame_end) + 2
    upstream.script(Reply(sse=sse, cut_after_bytes=cut, slice_size=cut))
    resp = await post(client, creds, chat_body(stream=True))
    raw, events = await stream_events(resp)
    assert b"[DONE]" not in raw
    assert events[-1].event == "error"
    assert [e.event for e in events[:-1]] == ["chunk", "chunk"]
    error = json.loads(events[-1].data)
    assert error["data"]["code"] == "upstream_error"
    assert "error" in error


async def test_upstream_stall_mid_stream_becomes_an_error_event(make_gateway, upstream) -> None:
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
    resp = await post(client, creds, chat_body(stream=True))
    raw, events = await stream_events(resp)
    assert b"[DONE]" not in raw
    assert events[-1].event == "error"
    assert [e.event for e in events[:-1]] == ["chunk", "chunk"]
    error = json.loads(events[-1].data)
    assert error["data"]["code"] in {"upstream_timeout", "upstream_error"}
    assert "error" in error
    await upstream.wait_disconnect()  # the gateway let go of the stalled upstream
