"""Every status of the DESIGN's error table (section 2), through HTTP.

Real parts only: a real Redis, a real fake upstream over TCP, the gateway on a real
socket. Each test checks the status, the JSON body shape and the documented headers,
and that no error response leaks a key or a stack trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.credentials import generate_key
from gateway.usage import input_token_bound
from tests.support.harness import (
    PROVIDER_KEY,
    STORE_TIMEOUT_FAST,
    UNAUTHORIZED,
    Credentials,
    Gateway,
    GatewayFactory,
    assert_clean,
    bearer,
    chat_body,
    chat_url,
    provider_entry,
)
from tests.support.ports import free_port
from tests.support.upstream import (
    FakeUpstream,
    Reply,
    openai_completion,
    openai_error,
    openai_stream,
)

PROJECT_MAX_OUTPUT = 100  # harness: every project has max_output_tokens 100


async def error_json(resp: Any, status: int, creds: Credentials) -> dict[str, Any]:
    """Check the common shape of an error answer and return its JSON body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    assert resp.headers.get("X-Request-Id"), "every error response names its request"
    assert_clean(text, creds)
    body = await resp.json()
    assert isinstance(body, dict)
    return body


def assert_detail_only(body: dict[str, Any]) -> None:
    assert set(body) == {"detail", "message"}, body
    assert isinstance(body["detail"], str)
    assert body["detail"]


# --------------------------------------------------------------------------- 401


def _unknown_key(creds: Credentials) -> dict[str, str]:
    return bearer(generate_key().secret)


def _same_prefix_wrong_secret(creds: Credentials) -> dict[str, str]:
    """A well-formed key sharing a real key's public prefix, with another secret part."""
    other = generate_key().secret
    return bearer(creds.key[:16] + other[16:])


def _expired_jwt(creds: Credentials) -> dict[str, str]:
    return bearer(creds.session("alpha", now=time.time() - 3600))


UNAUTHORIZED_HEADERS = {
    "missing_header": lambda creds: {},
    "non_bearer_scheme": lambda creds: {"Authorization": f"Basic {creds.key}"},
    "bearer_without_token": lambda creds: {"Authorization": "Bearer "},
    "garbage_token": lambda creds: bearer("garbage.not-a-token"),
    "unknown_well_formed_key": _unknown_key,
    "known_prefix_wrong_secret": _same_prefix_wrong_secret,
    "revoked_key": lambda creds: bearer(creds.revoked_key),
    "expired_jwt": _expired_jwt,
}


@pytest.mark.parametrize("case", sorted(UNAUTHORIZED_HEADERS))
async def test_401_unauthorized(gateway: Gateway, upstream: FakeUpstream, case: str) -> None:
    client, _, creds = gateway
    headers = UNAUTHORIZED_HEADERS[case](creds)
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=headers)
    body = await error_json(resp, 401, creds)
    assert body == UNAUTHORIZED
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert upstream.requests == []


@pytest.mark.parametrize("case", ["missing_header", "garbage_token", "unknown_well_formed_key"])
async def test_401_not_404_for_unknown_project_when_unauthenticated(
    gateway: Gateway, upstream: FakeUpstream, case: str
) -> None:
    client, _, creds = gateway
    headers = UNAUTHORIZED_HEADERS[case](creds)
    resp = await client.post(chat_url("no-such-project"), json=chat_body(), headers=headers)
    body = await error_json(resp, 401, creds)
    assert body == UNAUTHORIZED
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert upstream.requests == []


# --------------------------------------------------------------------------- 402


def _next_utc_midnight(now: datetime) -> str:
    day = (now + timedelta(days=1)).date()
    return f"{day.isoformat()}T00:00:00Z"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_402_budget_exhausted_before_anything_is_sent(
    make_gateway: GatewayFactory, upstream: FakeUpstream, stream: bool
) -> None:
    client, _, creds = await make_gateway(
        projects={"alpha": {"budgets": {"project": {"day": {"total_tokens": 50}}}}}
    )
    body_sent = chat_body(stream=stream)
    before = datetime.now(UTC)
    resp = await client.post(chat_url("alpha"), json=body_sent, headers=bearer(creds.key))
    after = datetime.now(UTC)
    body = await error_json(resp, 402, creds)
    assert body["error"] == "budget_exhausted"
    assert "daily total_tokens cap" in body["reason"]
    assert body["limit"] == 50
    assert body["used"] == 0
    assert body["reserved"] == 0
    # The worst case: the input bound plus the output ceiling (the project's 100).
    assert body["requested"] == input_token_bound(body_sent, 1_600) + PROJECT_MAX_OUTPUT
    assert body["requested"] > body["limit"]
    assert body["resets_at"] in {_next_utc_midnight(before), _next_utc_midnight(after)}
    resets = datetime.fromisoformat(body["resets_at"])
    assert resets.tzinfo is not None
    assert resets.utcoffset() == timedelta(0)
    assert "WWW-Authenticate" not in resp.headers
    assert upstream.requests == []


# --------------------------------------------------------------------------- 403


async def test_403_read_only_key_cannot_call_a_model(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.read_key))
    body = await error_json(resp, 403, creds)
    assert_detail_only(body)
    assert upstream.requests == []


async def test_403_session_token_of_alpha_used_on_beta(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    token = creds.session("alpha")
    resp = await client.post(chat_url("beta"), json=chat_body(), headers=bearer(token))
    body = await error_json(resp, 403, creds)
    assert_detail_only(body)
    assert token not in await resp.text()
    assert upstream.requests == []


# --------------------------------------------------------------------------- 404


async def test_404_unknown_project_with_valid_key(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(
        chat_url("no-such-project"), json=chat_body(), headers=bearer(creds.key)
    )
    body = await error_json(resp, 404, creds)
    assert_detail_only(body)
    assert upstream.requests == []


async def test_404_project_of_another_org(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    # gamma belongs to globex; the key is acme's: default deny, indistinguishable from unknown.
    resp = await client.post(chat_url("gamma"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 404, creds)
    assert_detail_only(body)
    unknown = await client.post(
        chat_url("no-such-project"), json=chat_body(), headers=bearer(creds.key)
    )
    assert body == await error_json(unknown, 404, creds)
    assert upstream.requests == []


async def test_404_unknown_model_alias(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(
        chat_url("alpha"), json=chat_body(model="no-such-alias"), headers=bearer(creds.key)
    )
    body = await error_json(resp, 404, creds)
    assert_detail_only(body)
    assert upstream.requests == []


async def test_404_unknown_path_is_json(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post("/v1/nope", json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 404, creds)
    assert_detail_only(body)
    resp = await client.post("/v1/nope", json=chat_body())
    body = await error_json(resp, 404, creds)
    assert_detail_only(body)
    resp = await client.get("/nope")
    body = await error_json(resp, 404, creds)
    assert_detail_only(body)
    assert upstream.requests == []


# --------------------------------------------------------------------------- 409


async def test_409_disabled_project(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(chat_url("sleepy"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 409, creds)
    assert_detail_only(body)
    assert upstream.requests == []


async def test_409_model_alias_without_an_active_route(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        projects={
            "alpha": {
                "models": {
                    "default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]},
                    "parked": {"routes": []},
                }
            }
        }
    )
    resp = await client.post(
        chat_url("alpha"), json=chat_body(model="parked"), headers=bearer(creds.key)
    )
    body = await error_json(resp, 409, creds)
    assert_detail_only(body)
    assert upstream.requests == []


# --------------------------------------------------------------------------- 413


async def test_413_body_over_the_configured_size(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"limits": {"max_body_bytes": 2048, "reservation_ttl_seconds": 60}}
    )
    resp = await client.post(
        chat_url("alpha"), json=chat_body("x" * 4096), headers=bearer(creds.key)
    )
    body = await error_json(resp, 413, creds)
    assert_detail_only(body)
    assert upstream.requests == []
    # A body under the limit still passes on the same gateway.
    ok = await client.post(chat_url("alpha"), json=chat_body("x" * 100), headers=bearer(creds.key))
    assert ok.status == 200, await ok.text()


# --------------------------------------------------------------------------- 422

VALIDATION_CASES: dict[str, tuple[Any, str | None]] = {
    "malformed_json": (b'{"messages": [{"role": "user", "content": "hi"}', None),
    "missing_messages": ({"model": "default"}, "messages"),
    "empty_messages": ({"messages": []}, "messages"),
    "bad_role": ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    "temperature_string": (chat_body(temperature="hot"), "temperature"),
    "stream_string": (chat_body(stream="yes"), "stream"),
    "max_tokens_zero": (chat_body(max_tokens=0), "max_tokens"),
    "body_not_an_object": ([{"role": "user", "content": "hi"}], None),
}


@pytest.mark.parametrize("case", sorted(VALIDATION_CASES))
async def test_422_validation_failed_names_the_field(
    gateway: Gateway, upstream: FakeUpstream, case: str
) -> None:
    client, _, creds = gateway
    payload, param = VALIDATION_CASES[case]
    headers = {**bearer(creds.key), "Content-Type": "application/json"}
    if isinstance(payload, bytes):
        resp = await client.post(chat_url("alpha"), data=payload, headers=headers)
    else:
        resp = await client.post(chat_url("alpha"), json=payload, headers=bearer(creds.key))
    body = await error_json(resp, 422, creds)
    assert set(body) == {"error", "message", "param"}, body
    assert body["error"] == "validation_failed"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["param"] == param
    assert upstream.requests == []


@pytest.mark.parametrize("where", ["metadata", "tools", "unknown_param", "message_field"])
async def test_422_for_a_body_nested_deeper_than_can_be_sent_on(
    gateway: Gateway, upstream: FakeUpstream, where: str
) -> None:
    """orjson reads ~1,000 levels but writes 254: such a body passed validation, then
    failed when measured or forwarded, a 500 (after the reservation, for some)."""
    client, _, creds = gateway
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    body: dict[str, Any] = chat_body()
    if where == "tools":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"a": deep}}}]
    elif where == "message_field":
        body["messages"][0]["extra"] = deep
    else:
        body[where] = {"a": deep} if where == "metadata" else deep
    resp = await client.post(chat_url("alpha"), json=body, headers=bearer(creds.key))
    answer = await error_json(resp, 422, creds)
    assert answer["message"] == (
        "request body is nested deeper than 64 levels (limits.max_json_depth)"
    )
    assert upstream.requests == []


async def test_422_byok_key_rejected_without_the_providers_message(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    provider_message = (
        f"Incorrect API key provided: {PROVIDER_KEY}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    upstream.script(Reply(status=401, json=openai_error(401, provider_message)))
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 422, creds)
    assert body["error"] == "byok_key_rejected"
    assert body["provider"] == "upstream"
    assert isinstance(body["message"], str)
    assert body["message"]
    text = await resp.text()
    assert provider_message not in text
    assert "Incorrect API key provided" not in text
    assert "WWW-Authenticate" not in resp.headers  # the client's credential was fine
    assert len(upstream.requests) == 1


async def test_422_provider_validation_error_is_scrubbed(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(
        Reply(
            status=400,
            json=openai_error(400, f"Invalid 'messages' for key {PROVIDER_KEY}", param="messages"),
        )
    )
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 422, creds)
    assert body["error"] == "validation_failed"
    assert isinstance(body["message"], str)


# --------------------------------------------------------------------------- 429


async def test_429_upstream_rate_limit_keeps_retry_after(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(
        Reply(
            status=429, json=openai_error(429, "Rate limit reached"), headers={"Retry-After": "7"}
        )
    )
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 429, creds)
    assert_detail_only(body)
    assert resp.headers["Retry-After"] == "7"


async def test_429_local_requests_per_minute_limit(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        projects={"alpha": {"rate_limits": {"requests_per_minute": 1}}}
    )
    first = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    assert first.status == 200, await first.text()
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 429, creds)
    assert_detail_only(body)
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert len(upstream.requests) == 1


# --------------------------------------------------------------------------- 502


async def test_502_upstream_500(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(status=500, json=openai_error(500)))
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 502, creds)
    assert_detail_only(body)
    assert len(upstream.requests) == 1


async def test_502_upstream_500_on_a_stream_request(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(status=500, json=openai_error(500)))
    resp = await client.post(
        chat_url("alpha"), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    body = await error_json(resp, 502, creds)
    assert_detail_only(body)


async def test_502_upstream_unreachable(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    closed = free_port()  # bound then released: nothing listens there
    client, _, creds = await make_gateway(
        gateway={"providers": {"dead": provider_entry(f"http://127.0.0.1:{closed}/v1")}},
        projects={
            "deadproj": {
                "id": "prj_deadproj",
                "models": {"default": {"routes": [{"provider": "dead", "model": "gpt-4o-mini"}]}},
            }
        },
    )
    resp = await client.post(chat_url("deadproj"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 502, creds)
    assert_detail_only(body)
    assert upstream.requests == []


# --------------------------------------------------------------------------- 504


async def test_504_stream_first_byte_timeout(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"providers": {"upstream": provider_entry(upstream.base_url, first_byte=0.5)}}
    )
    upstream.script(Reply(json=None, sse=b"data: [DONE]\n\n", delay_before_headers=2.0))
    resp = await client.post(
        chat_url("alpha"), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    body = await error_json(resp, 504, creds)
    assert_detail_only(body)


async def test_504_unary_total_timeout(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"providers": {"upstream": provider_entry(upstream.base_url, total=0.5)}}
    )
    upstream.script(Reply(json={"never": "sent in time"}, delay_before_headers=2.0))
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 504, creds)
    assert_detail_only(body)


@pytest.mark.parametrize(
    ("reply", "status", "error"),
    [
        (
            Reply(status=401, json=openai_error(401, f"bad key {PROVIDER_KEY}")),
            422,
            "byok_key_rejected",
        ),
        (Reply(status=403, json=openai_error(403, "forbidden")), 422, "byok_key_rejected"),
        (Reply(status=429, json=openai_error(429), headers={"Retry-After": "7"}), 429, None),
        (Reply(status=500, json=openai_error(500)), 502, None),
        (Reply(status=503, json=openai_error(503)), 502, None),
    ],
    ids=["401", "403", "429", "500", "503"],
)
async def test_upstream_failure_before_first_byte_on_a_stream_is_a_plain_status(
    gateway: Gateway, upstream: FakeUpstream, reply: Reply, status: int, error: str | None
) -> None:
    client, _, creds = gateway
    upstream.script(reply)
    resp = await client.post(
        chat_url("alpha"), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    body = await error_json(resp, status, creds)
    if error is None:
        assert_detail_only(body)
    else:
        assert body["error"] == error
        assert body["provider"] == "upstream"
    if status == 429:
        assert resp.headers["Retry-After"] == "7"


async def test_504_stream_headers_then_silence_before_the_first_chunk(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """The upstream sends its 200 headers, then nothing: the client has received no byte,
    so this is a timeout before the first byte (504), not a failure (502)."""
    client, _, creds = await make_gateway(
        gateway={"providers": {"upstream": provider_entry(upstream.base_url, idle=0.3)}}
    )
    upstream.script(Reply(sse=openai_stream(["late"]), hang_after_bytes=0))
    resp = await client.post(
        chat_url("alpha"), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    body = await error_json(resp, 504, creds)
    assert_detail_only(body)


async def test_504_unary_body_stalls_after_headers(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        gateway={"providers": {"upstream": provider_entry(upstream.base_url, idle=0.3)}}
    )
    upstream.script(Reply(json=openai_completion(), hang_after_bytes=20))
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 504, creds)
    assert_detail_only(body)


async def test_502_unary_body_cut_mid_way(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    upstream.script(Reply(json=openai_completion(), cut_after_bytes=20))
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    body = await error_json(resp, 502, creds)
    assert_detail_only(body)


async def test_502_stream_cut_before_the_first_chunk(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    upstream.script(Reply(sse=openai_stream(["never"]), cut_after_bytes=20))
    resp = await client.post(
        chat_url("alpha"), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    body = await error_json(resp, 502, creds)
    assert_detail_only(body)


# --------------------------------------------------------------------------- 503


@pytest.mark.serial
async def test_503_budget_store_unreachable_fails_closed_fast(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    closed = free_port()
    client, _, creds = await make_gateway(redis_url=f"redis://127.0.0.1:{closed}/0")
    started = time.perf_counter()
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    text = await resp.text()
    elapsed = time.perf_counter() - started
    body = await error_json(resp, 503, creds)
    assert_detail_only(body)
    assert resp.headers["Retry-After"]
    assert elapsed < 1.0, f"fail-closed must answer at once, took {elapsed:.3f}s: {text}"
    assert upstream.requests == []  # fail closed: nothing sent unmetered

    ready = await client.get("/readyz")
    ready_body = await error_json(ready, 503, creds)
    assert ready.headers["Retry-After"]
    assert "detail" in ready_body


@pytest.fixture
async def silent_tcp_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


@pytest.mark.serial
async def test_503_budget_store_hung_fails_closed_without_hanging(
    make_gateway: GatewayFactory, upstream: FakeUpstream, silent_tcp_port: int
) -> None:
    client, _, creds = await make_gateway(
        redis_url=f"redis://127.0.0.1:{silent_tcp_port}/0", gateway=STORE_TIMEOUT_FAST
    )
    started = time.perf_counter()
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    text = await resp.text()
    elapsed = time.perf_counter() - started
    body = await error_json(resp, 503, creds)
    assert_detail_only(body)
    assert resp.headers["Retry-After"]
    assert elapsed < 1.0, f"fail-closed must not hang, took {elapsed:.3f}s: {text}"
    assert upstream.requests == []
    ready = await client.get("/readyz")
    await error_json(ready, 503, creds)
    assert ready.headers["Retry-After"]


async def test_readyz_ok_with_reachable_store(gateway: Gateway) -> None:
    client, _, _ = gateway
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()


ODD_KEYS = {
    "groq_shaped": "gsk_" + "Q7x9LmN2pR4tV6wY8zA1bC3dE5fG7hJ9kL2mN4pQ6rS8tU0vW",
    "vllm_shaped": "vllm-operator-secret-7f3a9c2e1b",
}


@pytest.mark.parametrize("shape", sorted(ODD_KEYS))
async def test_provider_key_of_any_shape_never_echoed_in_a_422(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
) -> None:
    """The provider quotes the key in a 400: the gateway relays its message, never the key."""
    key = ODD_KEYS[shape]
    monkeypatch.setenv("ODD_PROVIDER_KEY", key)
    client, _, creds = await make_gateway(
        projects={"alpha": {"provider_keys": {"upstream": "ODD_PROVIDER_KEY"}}}
    )
    upstream.script(
        Reply(status=400, json=openai_error(400, f"Invalid request made with key {key}"))
    )
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    assert key not in await resp.text()
    body = await error_json(resp, 422, creds)
    assert body["error"] == "validation_failed"
    assert upstream.last.header("Authorization") == f"Bearer {key}"


@pytest.mark.parametrize("shape", sorted(ODD_KEYS))
async def test_provider_key_of_any_shape_never_echoed_in_an_error_event(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
) -> None:
    """The provider quotes the key in a mid-stream error frame: the error event relays
    the failure, never the key."""
    key = ODD_KEYS[shape]
    monkeypatch.setenv("ODD_PROVIDER_KEY", key)
    client, _, creds = await make_gateway(
        projects={"alpha": {"provider_keys": {"upstream": "ODD_PROVIDER_KEY"}}}
    )
    good = openai_stream(["Hel", "lo"], include_usage=False).split(b"\n\n")[0] + b"\n\n"
    bad = b'event: error\ndata: {"error":{"message":"quota exceeded for key ' + key.encode()
    bad += b'","type":"server_error","code":"quota"}}\n\n'
    upstream.script(Reply(sse=good + bad))
    resp = await client.post(
        chat_url("alpha"), json=chat_body(stream=True), headers=bearer(creds.key)
    )
    assert resp.status == 200, await resp.text()
    raw = await resp.text()
    assert "event: error" in raw
    assert key not in raw


# --------------------------------------------------------------------------- cross-cutting


async def test_every_error_response_carries_a_request_id_and_no_secrets(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """A mixed run of failures: each answer has X-Request-Id and leaks nothing."""
    client, _, creds = await make_gateway()
    upstream.script(
        Reply(status=401, json=openai_error(401, f"bad key {PROVIDER_KEY}")),
        Reply(status=500, json=openai_error(500, f"boom {PROVIDER_KEY} Traceback (most recent")),
        Reply(status=429, json=openai_error(429, f"slow {PROVIDER_KEY}")),
    )
    attempts = [
        ("alpha", chat_body(), {"Authorization": f"Token {creds.key}"}, 401),
        ("alpha", chat_body(), bearer(creds.key + "x"), 401),
        ("alpha", chat_body(), bearer(creds.read_key), 403),
        ("gamma", chat_body(), bearer(creds.key), 404),
        ("sleepy", chat_body(), bearer(creds.key), 409),
        ("alpha", {"messages": "nope"}, bearer(creds.key), 422),
        ("alpha", chat_body(), bearer(creds.key), 422),
        ("alpha", chat_body(), bearer(creds.key), 502),
        ("alpha", chat_body(), bearer(creds.key), 429),
    ]
    ids = set()
    for project, payload, headers, status in attempts:
        resp = await client.post(chat_url(project), json=payload, headers=headers)
        await error_json(resp, status, creds)
        ids.add(resp.headers["X-Request-Id"])
    assert len(ids) == len(attempts), "each request gets its own id"


async def test_client_supplied_request_id_is_echoed_on_errors(gateway: Gateway) -> None:
    client, _, creds = gateway
    rid = "client-req-0123456789"
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers={"X-Request-Id": rid})
    await error_json(resp, 401, creds)
    assert resp.headers["X-Client-Request-Id"] == rid
    assert resp.headers["X-Request-Id"] != rid  # the gateway's own id


async def test_405_wrong_method_on_a_known_route_is_json(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """The router's own answers survive the /v1 middlewares: a GET on the chat route is 405
    with Allow, not "project not found" (errors.py renders 405 and keeps Allow)."""
    client, _, creds = gateway
    resp = await client.get(chat_url("alpha"), headers=bearer(creds.key))
    body = await error_json(resp, 405, creds)
    assert_detail_only(body)
    assert "POST" in resp.headers.get("Allow", "")
    assert upstream.requests == []
