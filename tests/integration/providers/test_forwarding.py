"""What the upstream receives (DESIGN section 6): the model and the clamped output
ceiling the route names, usage always asked for on streams, the client's credentials
and cookies never passed on, the provider key of the project, connections reused.

The fake upstream records every request it gets over TCP.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.harness import (
    BYOK_KEY,
    PROVIDER_KEY,
    Gateway,
    GatewayFactory,
    bearer,
    chat_body,
    chat_url,
    post_chat,
)
from tests.support.sse import stream_events
from tests.support.upstream import FakeUpstream, Reply, openai_completion, openai_stream

PROJECT_MAX_OUTPUT = 100  # harness: every project has max_output_tokens 100


# --------------------------------------------------------------------------- the request upstream


@pytest.mark.parametrize(
    ("alias", "upstream_model"), [("default", "gpt-4o-mini"), ("smart", "gpt-4o")]
)
async def test_model_is_rewritten_to_the_routes_model(
    gateway: Gateway, upstream: FakeUpstream, alias: str, upstream_model: str
) -> None:
    client, _, creds = gateway
    resp = await post_chat(client, creds, chat_body(model=alias))
    assert resp.status == 200, await resp.text()
    assert upstream.last.json()["model"] == upstream_model
    assert (await resp.json())["model"] == alias


async def test_model_defaults_to_the_projects_default_alias(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    resp = await post_chat(client, creds, chat_body())
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
    gateway: Gateway, upstream: FakeUpstream, asked: dict[str, Any], expected: dict[str, int]
) -> None:
    client, _, creds = gateway
    resp = await post_chat(client, creds, chat_body(**asked))
    assert resp.status == 200, await resp.text()
    sent = upstream.last.json()
    got = {k: sent[k] for k in ("max_tokens", "max_completion_tokens") if k in sent}
    assert got == expected


async def test_max_tokens_clamped_on_stream_requests_too(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    resp = await post_chat(client, creds, chat_body(stream=True, max_tokens=5000))
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
    gateway: Gateway, upstream: FakeUpstream, options: dict[str, Any] | None
) -> None:
    client, _, creds = gateway
    extra: dict[str, Any] = {"stream": True}
    if options is not None:
        extra["stream_options"] = options
    resp = await post_chat(client, creds, chat_body(**extra))
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
    gateway: Gateway, upstream: FakeUpstream, extra: dict[str, Any]
) -> None:
    client, _, creds = gateway
    resp = await post_chat(client, creds, chat_body(**extra))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    sent = upstream.last.json()
    assert "stream_options" not in sent  # OpenAI rejects stream_options without stream
    assert sent.get("stream") in (None, False)


async def test_client_credentials_and_cookies_are_not_forwarded(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
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
    make_gateway: GatewayFactory, upstream: FakeUpstream
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
    assert (await post_chat(client, creds, chat_body())).status == 200
    for project in ("alpha", "beta"):
        resp = await post_chat(client, creds, chat_body(), project=project)
        assert resp.status == 200, await resp.text()
        assert upstream.last.header("Cookie") is None, project
    assert len(upstream.requests) == 3


async def test_a_finished_stream_hands_its_connection_back_for_the_next_call(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """Providers end the body a moment after [DONE] (the last chunk of the chunked
    encoding comes in its own packet). The stream is finished at [DONE], and its
    connection must still go back to the pool: a new one to a provider costs a TLS
    handshake on the next call."""
    client, _, creds = gateway
    for _ in range(3):
        upstream.script(Reply(sse=openai_stream(["Hel", "lo"]), delay_before_end=0.05))
        resp = await post_chat(client, creds, chat_body(stream=True))
        raw, _ = await stream_events(resp)
        assert raw.endswith(b"event: [DONE]\ndata: [DONE]\n\n")
    peers = [rec.peer for rec in upstream.requests]
    assert len(peers) == 3
    assert peers[0] is not None
    assert peers[1] == peers[0]
    assert peers[2] == peers[0]


async def test_a_body_left_open_after_the_last_event_is_dropped_soon(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """The wait for the body's end is short: an upstream that keeps it open after
    [DONE] does not hold the client's stream, and its connection is not reused."""
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["Hi"]), delay_before_end=3.0))
    started = time.monotonic()
    raw, _ = await stream_events(await post_chat(client, creds, chat_body(stream=True)))
    assert raw.endswith(b"event: [DONE]\ndata: [DONE]\n\n")
    assert time.monotonic() - started < 1.5  # the drain gives up after 0.25 s
    await upstream.wait_disconnect()
    assert (await post_chat(client, creds, chat_body())).status == 200
    assert upstream.requests[1].peer != upstream.requests[0].peer


async def test_project_owned_provider_key_is_sent_instead_of_the_gateways(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        projects={"alpha": {"provider_keys": {"upstream": "TEST_BYOK_KEY"}}}
    )
    resp = await post_chat(client, creds, chat_body())
    assert resp.status == 200, await resp.text()
    assert upstream.last.header("Authorization") == f"Bearer {BYOK_KEY}"
    resp = await post_chat(client, creds, chat_body(), project="beta")
    assert resp.status == 200, await resp.text()
    assert upstream.last.header("Authorization") == f"Bearer {PROVIDER_KEY}"


async def test_session_token_is_not_forwarded(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    token = creds.session("alpha")
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    assert resp.status == 200, await resp.text()
    rec = upstream.last
    assert rec.header("Authorization") == f"Bearer {PROVIDER_KEY}"
    assert all(token not in value for value in rec.headers.values())


async def test_understood_parameters_pass_through(gateway: Gateway, upstream: FakeUpstream) -> None:
    """Parameters the gateway understands reach the provider as sent (unknown ones are
    refused: tests/integration/billing/test_forwarded_fields.py)."""
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
    resp = await post_chat(client, creds, body)
    assert resp.status == 200, await resp.text()
    sent = upstream.last.json()
    for key, value in extra.items():
        assert sent[key] == value, key
    assert sent["messages"] == body["messages"]
