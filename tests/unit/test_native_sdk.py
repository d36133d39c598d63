"""The official SDKs read what the native pass-through relays as they read the provider.

A tiny aiohttp server on 127.0.0.1 answers ``POST /v1/messages`` and ``POST
/v1/responses`` with scripted bytes (in 97-byte slices): a recording as the provider
sent it, or as gateway.surfaces.native_messages / native_responses relay it. The
anthropic and openai SDKs accumulate both (their own SSE decoding, event types and
stream accumulators: ``get_final_message`` / ``get_final_response``); the answers must
be the same but for the re-stamped id and model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from gateway.surfaces import native_messages, native_responses

DATA = Path(__file__).resolve().parent.parent / "data"
GATEWAY_ID = "msg_gateway0001"
ALIAS = "claude-alias"
SLICE = 97


@dataclass
class Answer:
    """What the server sends next."""

    body: bytes = b""
    content_type: str = "text/event-stream"


ANSWER: web.AppKey[Answer] = web.AppKey("answer", Answer)


async def answer(request: web.Request) -> web.StreamResponse:
    script = request.app[ANSWER]
    await request.read()
    if script.content_type == "application/json":
        return web.Response(body=script.body, content_type="application/json")
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await out.prepare(request)
    for i in range(0, len(script.body), SLICE):
        await out.write(script.body[i : i + SLICE])
    await out.write_eof()
    return out


@pytest.fixture
async def server(aiohttp_server: Any) -> tuple[str, Answer]:
    app = web.Application()
    app[ANSWER] = script = Answer()
    app.router.add_post("/v1/messages", answer)
    app.router.add_post("/v1/responses", answer)
    running = await aiohttp_server(app)
    return str(running.make_url("")).rstrip("/"), script


def relayed_messages(raw: bytes) -> bytes:
    stream = native_messages.NativeMessagesStream(GATEWAY_ID, ALIAS)
    outs = [stream.feed(raw[i : i + SLICE]) for i in range(0, len(raw), SLICE)]
    outs.append(stream.close())
    assert all(out.error is None for out in outs)
    return b"".join(out.data for out in outs)


def relayed_responses(raw: bytes) -> bytes:
    stream = native_responses.NativeResponsesStream(ALIAS)
    outs = [stream.feed(raw[i : i + SLICE]) for i in range(0, len(raw), SLICE)]
    outs.append(stream.close())
    assert all(out.error is None for out in outs)
    return b"".join(out.data for out in outs)


# --------------------------------------------------------------------------- anthropic


async def anthropic_final(base: str, script: Answer, body: bytes) -> tuple[list[str], Any]:
    script.body, script.content_type = body, "text/event-stream"
    client = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    try:
        async with client.messages.stream(
            model=ALIAS, max_tokens=1024, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            kinds: list[str] = [event.type async for event in stream]
            return kinds, await stream.get_final_message()
    finally:
        await client.close()


@pytest.mark.parametrize(
    "name",
    [
        "anthropic_messages_thinking_tool_use_stream.sse",
        "anthropic_messages_thinking_text_stream.sse",
        "anthropic_messages_cache_read_compaction_stream.sse",
        "anthropic_messages_text_cache_usage.sse",
        "anthropic_messages_tool_use.sse",
    ],
)
async def test_anthropic_sdk_reads_the_relayed_stream_as_the_recording(
    server: tuple[str, Answer], name: str
) -> None:
    base, script = server
    raw = (DATA / name).read_bytes()
    kinds, upstream = await anthropic_final(base, script, raw)
    relayed_kinds, relayed = await anthropic_final(base, script, relayed_messages(raw))
    assert relayed.id == GATEWAY_ID
    assert relayed.model == ALIAS
    assert relayed.model_dump(warnings=False) == {
        **upstream.model_dump(warnings=False),
        "id": GATEWAY_ID,
        "model": ALIAS,
    }
    assert relayed.content  # the SDK rebuilt the blocks
    if kinds[-1] == "message_stop":
        assert relayed_kinds == kinds
    else:  # the recording lacks its final blank line: the relay completes it
        assert relayed_kinds == [*kinds, "message_stop"]


async def test_anthropic_sdk_rebuilds_thinking_signature_and_tool_call(
    server: tuple[str, Answer],
) -> None:
    base, script = server
    raw = (DATA / "anthropic_messages_thinking_tool_use_stream.sse").read_bytes()
    _, message = await anthropic_final(base, script, relayed_messages(raw))
    thinking, call = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking.startswith("The user wants me to:\n1. Use the fixed_version tool")
    assert thinking.signature.startswith("EoQDCm0IDhgCKkCDzGs2kL2P")
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == (
        "toolu_01825dXWLSoJwCst1qTsiWdb",
        "fixed_version",
        {},
    )
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 92


async def test_anthropic_sdk_reads_a_native_unary_answer(server: tuple[str, Answer]) -> None:
    base, script = server
    upstream = json.loads((DATA / "anthropic_message_cache_unary.json").read_text())
    out, _ = native_messages.native_unary(upstream, GATEWAY_ID, ALIAS)
    script.body, script.content_type = json.dumps(out).encode(), "application/json"
    client = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    try:
        message = await client.messages.create(
            model=ALIAS, max_tokens=1024, messages=[{"role": "user", "content": "Hi"}]
        )
    finally:
        await client.close()
    assert message.id == GATEWAY_ID
    assert message.model == ALIAS
    assert message.usage.cache_read_input_tokens == 1111
    assert message.usage.cache_creation_input_tokens == 418
    assert message.content[0].type == "text"


# --------------------------------------------------------------------------- openai


async def openai_final(base: str, script: Answer, body: bytes) -> tuple[list[str], Any]:
    script.body, script.content_type = body, "text/event-stream"
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
    try:
        async with client.responses.stream(model=ALIAS, input="Hi") as stream:
            kinds: list[str] = [event.type async for event in stream]
            return kinds, await stream.get_final_response()
    finally:
        await client.close()


@pytest.mark.parametrize(
    "name",
    [
        "openai_responses_text_stream.sse",
        "openai_responses_function_call_stream.sse",
        "openai_responses_reasoning_function_call_stream.sse",
        "openai_responses_reasoning_summary_stream.sse",
    ],
)
async def test_openai_sdk_reads_the_relayed_stream_as_the_recording(
    server: tuple[str, Answer], name: str
) -> None:
    base, script = server
    raw = (DATA / name).read_bytes()
    kinds, upstream = await openai_final(base, script, raw)
    relayed_kinds, relayed = await openai_final(base, script, relayed_responses(raw))
    assert relayed_kinds == kinds
    assert relayed.model == ALIAS
    assert relayed.id == upstream.id  # the upstream's: a stored response is its to continue
    assert relayed.model_dump(warnings=False) == {
        **upstream.model_dump(warnings=False),
        "model": ALIAS,
    }
    assert relayed.output
    assert relayed.usage is not None


async def test_openai_sdk_rebuilds_reasoning_and_function_call(
    server: tuple[str, Answer],
) -> None:
    base, script = server
    raw = (DATA / "openai_responses_reasoning_function_call_stream.sse").read_bytes()
    _, response = await openai_final(base, script, relayed_responses(raw))
    reasoning, call = response.output
    assert reasoning.type == "reasoning"
    assert reasoning.encrypted_content.startswith("gAAAAABoyXvy")
    assert call.type == "function_call"
    assert (call.name, call.arguments) == ("final_result", '{"result":6666}')
    assert response.usage.output_tokens_details.reasoning_tokens == 448


async def test_openai_sdk_reads_a_native_unary_answer(server: tuple[str, Answer]) -> None:
    base, script = server
    upstream = json.loads((DATA / "openai_response_cached_unary.json").read_text())
    out, _ = native_responses.native_unary(upstream, ALIAS)
    script.body, script.content_type = json.dumps(out).encode(), "application/json"
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
    try:
        response = await client.responses.create(model=ALIAS, input="Hi")
    finally:
        await client.close()
    assert response.model == ALIAS
    assert response.output_text == "OK"
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 4012
