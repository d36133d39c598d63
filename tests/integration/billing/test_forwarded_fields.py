"""Caps hold whatever the body says: what is forwarded upstream is what was reserved.

A scripted upstream that behaves like a llama.cpp / Ollama / vLLM server (it honours
its own output-length fields over ``max_tokens``, or ignores the clamp altogether)
attacks the cap; the gateway runs as a real ``gateway serve`` process for the headline
attack, in-process over TCP for the rest, against a real Redis.

``chat_body("Hello")`` has an input bound of 33 tokens; the harness projects cap output
at 100 tokens per request.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.config import ConfigError, load_config
from gateway.params import OUTPUT_LENGTH
from tests.support.harness import GatewayFactory, bearer, chat_body, write_config
from tests.support.metrics import metric
from tests.support.process import GatewayProcess
from tests.support.redis import settled
from tests.support.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_message,
    openai_completion,
)

URL = "/v1/projects/alpha/chat/completions"
INPUT_BOUND, CEILING = 33, 100


def llama_server(rec: Recorded) -> Reply:
    """A llama.cpp-style server: ``n_predict`` (or Ollama's ``options.num_predict``, or
    TGI's ``max_new_tokens``) wins over ``max_tokens``; it reports the truth."""
    body = rec.json()
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    wanted = (
        body.get("n_predict")
        or options.get("num_predict")
        or body.get("max_new_tokens")
        or body.get("max_tokens")
        or body.get("max_completion_tokens")
        or 16
    )
    return Reply(json=openai_completion("w " * wanted, prompt_tokens=11, completion_tokens=wanted))


# --------------------------------------------------------------------- the n_predict attack


async def test_twenty_parallel_n_predict_requests_cannot_pass_the_cap(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, redis: Redis
) -> None:
    """The attack as reported: 20 parallel requests with ``"n_predict": 3000`` to a
    llama.cpp-style server under a 20,000-token cap. Every one is refused with 422
    naming the field, before anything is reserved or sent; the same requests without
    it are served within the cap, the server told the clamped max_tokens."""
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        projects={"alpha": {"budgets": {"project": {"month": {"total_tokens": 20_000}}}}},
    )
    upstream.default = llama_server
    gateway = GatewayProcess(creds, tmp_path / "gateway.log")
    try:
        await gateway.start(timeout=30)
        async with aiohttp.ClientSession() as http:

            async def ask(extra: dict[str, Any]) -> tuple[int, Any]:
                async with http.post(
                    gateway.url(URL), json=chat_body(**extra), headers=bearer(creds.key)
                ) as resp:
                    return resp.status, await resp.json()

            refused = await asyncio.gather(*(ask({"n_predict": 3000}) for _ in range(20)))
            assert not upstream.requests
            for status, body in refused:
                assert status == 422, body
                assert body["param"] == "n_predict"
                assert "n_predict" in body["message"]
            served = await asyncio.gather(*(ask({}) for _ in range(20)))
        assert [status for status, _ in served] == [200] * 20
        assert all(r.json()["max_completion_tokens"] == CEILING for r in upstream.requests)
        assert all("n_predict" not in r.json() for r in upstream.requests)
        prefix = load_config(creds.config_dir, creds.env).gateway.redis.key_prefix
        state = await settled(redis, prefix)
        assert state["u1"] == 20 * CEILING  # each answer at most the clamp: 2,000 tokens
        assert state["u2"] <= 20_000
    finally:
        gateway.kill()


@pytest.mark.parametrize(
    "extra",
    [
        {"n_predict": 3000},  # llama.cpp
        {"options": {"num_predict": 3000}},  # Ollama
        {"max_new_tokens": 3000},  # TGI
        {"min_tokens": 3000},  # vLLM
        {"ignore_eos": True},  # vLLM, llama.cpp
        {"best_of": 20},  # vLLM, legacy completions
        {"max_output_tokens": 3000},  # Gemini-style
        {"prediction": {"type": "content", "content": "x" * 100}},  # OpenAI predicted outputs
    ],
)
async def test_output_length_fields_are_refused_naming_them(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, extra: dict[str, Any]
) -> None:
    """Every field a server reads as the answer's length is a 422 naming it; nothing is
    reserved, nothing is sent."""
    client, config, creds = await make_gateway()
    upstream.default = llama_server
    resp = await client.post(URL, json=chat_body(**extra), headers=bearer(creds.key))
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    (name,) = extra
    assert body["param"] == name
    assert f"{name!r}" in body["message"]
    assert "answer's length" in body["message"]
    assert not upstream.requests
    assert (await settled(redis, config))["u2"] == 0


async def test_unknown_fields_are_refused_naming_each(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """A field the gateway neither understands nor was allowed is refused, naming all
    the unknown ones (the first as ``param``), under both wire profiles."""
    client, _, creds = await make_gateway()
    body = chat_body(chat_template_kwargs={"enable_thinking": True}, top_k=5, seed=1)
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 422
    refused = await resp.json()
    assert refused["param"] == "chat_template_kwargs"
    assert "'chat_template_kwargs', 'top_k'" in refused["message"]
    assert "extra_params" in refused["message"]
    beta = "/v1/projects/beta/chat/completions"  # the openai wire profile
    resp = await client.post(beta, json=body, headers=bearer(creds.key))
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["param"] == "chat_template_kwargs"
    assert "top_k" in error["message"]
    assert not upstream.requests


async def test_unknown_stream_options_are_refused_and_known_ones_forwarded(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway()
    body = chat_body(stream=True, stream_options={"include_usage": False, "chunk_tokens": 999})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 422
    assert (await resp.json())["param"] == "stream_options.chunk_tokens"
    assert not upstream.requests
    body = chat_body(stream=True, stream_options={"continuous_usage_stats": True})
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200
    await resp.read()
    assert upstream.last.json()["stream_options"] == {
        "continuous_usage_stats": True,
        "include_usage": True,
    }


# ------------------------------------------------------------------------- extra_params


def _two_providers(upstream: FakeUpstream, allowed: list[str]) -> dict[str, Any]:
    """Provider ``vllm`` allows ``allowed``; ``plain`` (the fallback) allows nothing."""
    entry = {
        "kind": "openai",
        "base_url": upstream.base_url,
        "api_key_env": "TEST_PROVIDER_KEY",
        "timeouts": {"connect": 2, "first_byte": 2, "idle": 2, "total": 10},
    }
    return {
        "gateway": {"providers": {"vllm": {**entry, "extra_params": allowed}, "plain": entry}},
        "projects": {
            "alpha": {
                "models": {
                    "default": {
                        "routes": [
                            {"provider": "vllm", "model": "gpt-4o-mini"},
                            {"provider": "plain", "model": "gpt-4o-mini"},
                        ]
                    }
                }
            }
        },
    }


async def test_extra_params_are_forwarded_only_to_the_provider_that_allows_them(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(**_two_providers(upstream, ["top_k", "min_p"]))
    upstream.script(Reply(status=500, json={"error": {"message": "boom"}}))  # vllm fails
    body = chat_body(top_k=5, min_p=0.1)
    resp = await client.post(URL, json=body, headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    first, fallback = upstream.requests
    assert (first.json()["top_k"], first.json()["min_p"]) == (5, 0.1)
    assert "top_k" not in fallback.json()
    assert "min_p" not in fallback.json()


async def test_extra_params_count_in_the_input_bound(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """An allowed field a server may put in the prompt (vLLM's chat_template_kwargs,
    documents) is counted by its bytes: a request that fits without it is refused
    with 402 when it carries 5,000 bytes of it, and its 402 names that bound."""
    over = _two_providers(upstream, ["chat_template_kwargs"])
    over["projects"]["alpha"]["budgets"] = {"project": {"day": {"input_tokens": 1000}}}
    client, _, creds = await make_gateway(**over)
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    padded = chat_body(chat_template_kwargs={"documents": "x" * 5000})
    resp = await client.post(URL, json=padded, headers=bearer(creds.key))
    assert resp.status == 402, await resp.text()
    refusal = await resp.json()
    assert refusal["dimension"] == "input_tokens"
    assert refusal["requested"] >= INPUT_BOUND + 5000
    assert len(upstream.requests) == 1


async def test_anthropic_extra_params_go_into_the_messages_body(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    entry = {
        "kind": "anthropic",
        "base_url": upstream.base_url,
        "api_key_env": "TEST_PROVIDER_KEY",
        "extra_params": ["top_k"],
        "timeouts": {"connect": 2, "first_byte": 2, "idle": 2, "total": 10},
    }
    client, _, creds = await make_gateway(gateway={"providers": {"upstream": entry}})
    upstream.script(Reply(json=anthropic_message()))
    resp = await client.post(URL, json=chat_body(top_k=3), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    sent = upstream.last.json()
    assert sent["top_k"] == 3
    assert sent["max_tokens"] == CEILING


@pytest.mark.parametrize("name", [*sorted(OUTPUT_LENGTH), "max_tokens", "messages"])
def test_extra_params_cannot_name_a_length_field_or_an_understood_one(
    tmp_path: Path, upstream: FakeUpstream, name: str
) -> None:
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        "redis://127.0.0.1:1/0",
        gateway={
            "providers": {
                "upstream": {
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key_env": "TEST_PROVIDER_KEY",
                    "extra_params": ["top_k", name],
                }
            }
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(creds.config_dir, creds.env)
    reasons = " ".join(reason for _, _, reason in info.value.problems)
    assert f"extra_params: {name!r}" in reasons


def test_anthropic_extra_params_cannot_replace_a_translated_field(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        "redis://127.0.0.1:1/0",
        gateway={
            "providers": {
                "upstream": {
                    "kind": "anthropic",
                    "base_url": upstream.base_url,
                    "api_key_env": "TEST_PROVIDER_KEY",
                    "extra_params": ["system"],
                }
            }
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(creds.config_dir, creds.env)
    assert "Messages body" in " ".join(reason for _, _, reason in info.value.problems)


# ----------------------------------------------------------- an upstream past the ceiling


def _words_stream(count: int, usage_at_end: bool = True) -> bytes:
    frames: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
        for i in range(count)
    ]
    frames.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    if usage_at_end:
        frames.append(
            {
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": count, "total_tokens": count},
            }
        )
    for frame in frames:
        frame.update(id="up", object="chat.completion.chunk", created=1, model="gpt-4o-mini")
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + (
        b"data: [DONE]\n\n"
    )


async def test_a_stream_past_the_output_ceiling_is_cut_there(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """An upstream that ignores the clamped max tokens streams 3,000 tokens against a
    ceiling of 100: the client gets the first 100 deltas, then the error event
    ``output_limit``; the upstream is closed; the bill is the 101 deltas seen (each at
    least one token), not the 100 reserved."""
    client, config, creds = await make_gateway()
    upstream.script(Reply(sse=_words_stream(3000), slice_size=4096, delay_between_slices=0.01))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    text = await resp.text()
    assert text.count('"content":"w') == CEILING
    assert '"content":"w99 "' in text
    assert "event: error" in text
    assert "output_limit" in text
    assert "[DONE]" not in text
    await upstream.wait_disconnect()
    assert not upstream.last.completed
    state = await settled(redis, config)
    assert (state["u0"], state["u1"]) == (INPUT_BOUND, CEILING + 1)
    assert (
        await metric(
            client, "gateway_estimated_usage_total", project="alpha", reason="output_limit"
        )
        == 1
    )


async def test_a_running_count_past_the_ceiling_cuts_the_stream(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """Deltas of many tokens each (one per read): the upstream's own running count
    (continuous_usage_stats) shows it passed the ceiling, and is what is billed."""
    client, config, creds = await make_gateway()
    frames: list[dict[str, Any]] = [
        {
            "choices": [{"index": 0, "delta": {"content": "many words " * 30}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 60 * (i + 1)},
        }
        for i in range(10)
    ]
    for frame in frames:
        frame.update(id="up", object="chat.completion.chunk", created=1, model="gpt-4o-mini")
    raw = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    upstream.script(Reply(sse=raw, hang_after_bytes=len(raw)))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    text = await resp.text()
    assert text.count("many words") == 30  # the first delta (60 tokens) only
    assert "output_limit" in text
    state = await settled(redis, config)
    assert state["u1"] == 120  # the count that passed the ceiling


async def test_a_unary_answer_past_the_ceiling_is_billed_its_reported_truth(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    client, config, creds = await make_gateway()
    upstream.script(Reply(json=openai_completion("w " * 3000, completion_tokens=3000)))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200
    state = await settled(redis, config)
    assert state["u1"] == 3000


# ----------------------------------------------------- usage that never came, or came early


async def test_a_client_gone_between_finish_and_usage_is_billed_the_ceiling(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """A reasoning model's stream: 20 visible tokens, the finish chunk, then (late) the
    usage chunk saying 245. The client leaves between the two: the gateway never saw
    the truth, and the visible text is no bound of it: the output ceiling is billed."""
    client, config, creds = await make_gateway()
    head = b"".join(
        b"data: " + json.dumps(frame).encode() + b"\n\n"
        for frame in [
            *(
                {"choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
                for i in range(20)
            ),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
    )
    usage = {"prompt_tokens": 11, "completion_tokens": 245, "total_tokens": 256}
    tail = (
        b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
    )
    upstream.script(Reply(sse=head + tail, hang_after_bytes=len(head)))
    async with client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key)) as resp:
        seen = b""
        while b'"finish_reason":"stop"' not in seen:
            seen += await resp.content.readany()
    state = await settled(redis, config)
    assert (state["u0"], state["u1"]) == (INPUT_BOUND, CEILING)


async def test_an_early_usage_chunk_does_not_end_the_estimate(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """A ``choices: []`` usage chunk with 0 completion tokens before any content (some
    servers send the prompt count first): a disconnect later is billed the ceiling,
    not the 0 that chunk said."""
    client, config, creds = await make_gateway()
    frames = [
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 0}},
        *(
            {"choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
            for i in range(5)
        ),
    ]
    head = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    upstream.script(Reply(sse=head, hang_after_bytes=len(head)))
    async with client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key)) as resp:
        seen = b""
        while b"t4 " not in seen:
            seen += await resp.content.readany()
    state = await settled(redis, config)
    assert (state["u0"], state["u1"]) == (INPUT_BOUND, CEILING)


async def test_a_usage_on_the_last_finish_chunk_is_final(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis
) -> None:
    """Servers that put the final usage on the finish chunk itself (no separate usage
    chunk) are billed their truth, not the ceiling."""
    client, config, creds = await make_gateway()
    frames = [
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7},
        },
    ]
    raw = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    upstream.script(Reply(sse=raw + b"data: [DONE]\n\n"))
    resp = await client.post(URL, json=chat_body(stream=True), headers=bearer(creds.key))
    assert resp.status == 200
    await resp.read()
    state = await settled(redis, config)
    assert (state["u0"], state["u1"]) == (11, 7)
