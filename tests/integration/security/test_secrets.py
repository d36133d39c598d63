"""Secrets stay secret, credentials follow their key (README "Security").

A hostile or broken upstream must not get the provider key sent anywhere else, nor
make the gateway relay it (in an error text, a header); a malformed client request
must not be echoed back. Real fake upstreams over TCP, real Redis, the gateway
in-process (or a real ``gateway serve`` process where its logs are read).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.cli import main
from gateway.logs import JsonFormatter
from gateway.serve.lifecycle import reload_config
from tests.support.harness import (
    PROVIDER_KEY,
    Client,
    Credentials,
    Gateway,
    GatewayFactory,
    bearer,
    chat_body,
    edit_gateway_yaml,
    provider_entry,
    write_config,
)
from tests.support.process import GatewayProcess
from tests.support.redis import ledger_events
from tests.support.upstream import (
    FakeUpstream,
    Reply,
    anthropic_error,
    anthropic_stream,
    openai_completion,
    openai_error,
    openai_stream,
)

URL = "/v1/projects/alpha/chat/completions"


def provider_of(kind: str, base_url: str) -> dict[str, Any]:
    """A provider entry of ``kind``: openai (Bearer), azure (api-key header), anthropic."""
    entry = provider_entry(base_url)
    if kind == "anthropic":
        entry["kind"] = "anthropic"
    elif kind == "azure":
        entry.update(auth_header="api-key", auth_scheme="")
    return entry


def routed_to(entry: dict[str, Any], attempts: int = 1) -> dict[str, Any]:
    """make_gateway() arguments: project alpha's default model served by ``entry``."""
    return {
        "gateway": {
            "providers": {"upstream": entry},
            "resilience": {"retries": {"attempts_per_target": attempts, "backoff_base_ms": 10}},
        },
        "projects": {
            "alpha": {
                "models": {
                    "default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]}
                }
            }
        },
    }


def assert_no_key(text: str) -> None:
    assert PROVIDER_KEY not in text
    assert "DO-NOT-LEAK" not in text.upper()


# ------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_is_a_502_and_never_followed(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    second: FakeUpstream,
    kind: str,
    stream: bool,
) -> None:
    client, _, creds = await make_gateway(**routed_to(provider_of(kind, upstream.base_url), 2))
    target = second.base_url + ("/messages" if kind == "anthropic" else "/chat/completions")
    upstream.script(*[Reply(status=307, headers={"Location": target})] * 2)
    resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
    text = await resp.text()
    assert resp.status == 502, text
    assert resp.content_type == "application/json"
    assert second.requests == [], [r.headers for r in second.requests]
    assert_no_key(text)
    assert target not in text
    assert "Location" not in resp.headers
    # Retried (a 502 may be transient) at the configured URL only, never the Location.
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status", [301, 302, 303, 308, 300, 304])
async def test_every_3xx_is_a_502(
    make_gateway: GatewayFactory, upstream: FakeUpstream, second: FakeUpstream, status: int
) -> None:
    client, _, creds = await make_gateway(**routed_to(provider_of("azure", upstream.base_url)))
    upstream.script(Reply(status=status, headers={"Location": second.base_url + "/x"}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 502, await resp.text()
    assert second.requests == []


# ------------------------------------------------------------ malformed HTTP requests


def malformed_requests(key: str) -> dict[str, bytes]:
    """Requests aiohttp's parser rejects, each carrying ``key`` where it breaks."""
    chat = "POST /v1/projects/alpha/chat/completions HTTP/1.1\r\nHost: gw\r\n"
    cases = {
        "header line without a colon": f"{chat}Authorization Bearer {key}\r\n\r\n",
        "space in a header name": f"{chat}Authori zation: Bearer {key}\r\n\r\n",
        "control character in a value": f"{chat}Authorization: Bearer {key}\x01\r\n\r\n",
        "NUL in a value": f"{chat}Authorization: Bearer {key}\x00\r\n\r\n",
        "obsolete line folding": f"{chat}X-A: b\r\n Bearer {key}\r\n\r\n",
        "bad protocol version": f"POST /v1/{key} HTTX/1.1\r\nHost: gw\r\n\r\n",
        "bad method": f"{key}@ / HTTP/1.1\r\nHost: gw\r\n\r\n",
        "oversized header": f"{chat}Authorization: Bearer {key}{'a' * 9000}\r\n\r\n",
        "oversized request line": f"GET /{key}{'a' * 9000} HTTP/1.1\r\nHost: gw\r\n\r\n",
        "too many headers": chat + "".join(f"X-H{i}: {key}\r\n" for i in range(200)) + "\r\n",
        "bad content length": f"{chat}Content-Length: {key}\r\n\r\n",
        "bad chunk size": f"{chat}Transfer-Encoding: chunked\r\n\r\nzz{key}\r\n\r\n",
        # Well-formed, but refused by aiohttp before any middleware (its 417 page
        # quoted the header): on a route, and on a path that is none.
        "unknown Expect": f"{chat}Expect: {key}\r\nContent-Length: 2\r\n\r\n{{}}",
        "unknown Expect, unknown path": (
            f"POST /nowhere HTTP/1.1\r\nHost: gw\r\nExpect: {key}\r\nContent-Length: 0\r\n\r\n"
        ),
    }
    return {name: raw.encode("latin-1") for name, raw in cases.items()}


async def raw_exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection; everything the gateway answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_malformed_requests_get_json_and_are_logged_without_their_bytes(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str
) -> None:
    """aiohttp's own 400 page quotes the offending bytes (an API key with them): the
    gateway answers its JSON instead, and logs a warning without the request's bytes."""
    creds = write_config(tmp_path / "config", upstream.base_url, redis_url)
    gw = GatewayProcess(creds, tmp_path / "gateway.log")
    await gw.start()
    secrets = [creds.key, creds.key.upper(), PROVIDER_KEY]
    try:
        answers = {
            name: await raw_exchange(gw.port, raw)
            for name, raw in malformed_requests(creds.key).items()
        }
        await gw.wait_log(lambda r: r.get("msg") == "malformed request", count=len(answers))
    finally:
        gw.kill()
    for name, answer in answers.items():
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n")[0]
        expected = b"417" if "Expect" in name else b"400"
        assert status_line.split(b" ")[1] == expected, (name, answer[:300])
        assert b"content-type: application/json" in head.lower(), (name, head)
        assert b"x-request-id:" in head.lower(), (name, head)
        assert set(json.loads(body)) == {"detail", "message"}, (name, body)
        for secret in secrets:
            assert secret.encode() not in answer, (name, answer[:300])
        assert b"kt_live_" not in answer, (name, answer[:300])
    lines = gw.log_lines()
    for line in lines:
        for secret in (*secrets, "kt_live_", "Bearer"):
            assert secret not in line, line
    malformed = [r for r in gw.records() if r.get("msg") == "malformed request"]
    assert len(malformed) == len(answers), malformed
    assert {r["level"] for r in malformed} == {"warning"}, malformed
    assert not [r for r in gw.records() if r.get("level") in ("error", "critical")]


# ------------------------------------------------------------ upstream error text

SECRET_ENV = "SECRETS_TEST_PROVIDER_KEY"


@pytest.fixture
def hostile_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A random provider key (so that no fixed word of the gateway's can resemble it),
    in the environment the gateway's config reads it from."""
    key = "sk-" + secrets.token_urlsafe(30)
    monkeypatch.setenv(SECRET_ENV, key)
    return key


def key_forms(key: str) -> dict[str, str]:
    raw = key.encode()
    return {
        "plain": key,
        "upper": key.upper(),
        "lower": key.lower(),
        "reversed": key[::-1],
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "base32": base64.b32encode(raw).decode(),
        "hex": raw.hex(),
    }


def leaks(text: str, key: str, run: int = 10) -> list[str]:
    """Forms of ``key`` of which ``text`` holds a ``run``-character piece (any case)."""
    haystack = text.lower()
    found = []
    for name, form in key_forms(key).items():
        form = form.lower()
        if any(form[i : i + run] in haystack for i in range(len(form) - run + 1)):
            found.append(name)
    return found


def stream_failing_with(error: dict[str, Any]) -> bytes:
    """An OpenAI stream: one content chunk, then the provider's error frame."""
    head = openai_stream(["one "], include_usage=False).split(b"\n\n")[:2]
    return b"\n\n".join(head) + b"\n\n" + f"data: {json.dumps(error)}\n\n".encode()


def anthropic_failing_with(error: dict[str, Any]) -> bytes:
    """An Anthropic stream: its first events and a text delta, then an error event."""
    events = anthropic_stream(["one "]).split(b"\n\n")[:4]
    return b"\n\n".join(events) + b"\n\nevent: error\ndata: " + json.dumps(error).encode() + b"\n\n"


def hostile_replies(key: str) -> dict[str, tuple[str, bool, Reply]]:
    """Upstream answers echoing ``key`` in every field, form and split:
    name -> (provider kind, stream, reply)."""
    forms = key_forms(key)
    half = len(key) // 2
    openai_400 = openai_error(
        400, f"Invalid key {forms['upper']}", type_=forms["base64"], code=forms["lower"]
    )
    openai_400["error"]["param"] = forms["hex"][:60]
    split = openai_error(422, f"key starts {key[:half]}", type_=key[half:].lower(), code=None)
    stream_error = {
        "error": {
            "message": forms["reversed"],
            "type": forms["base32"],
            "code": forms["lower"][:40],
        }
    }
    return {
        "400, key upper-cased, base64 and lower-cased": ("openai", False, Reply(status=400, json=openai_400)),
        "422, key split across fields": ("openai", False, Reply(status=422, json=split)),
        "500, key and hex": ("openai", False, Reply(status=500, json=openai_error(500, key, code=forms["hex"][:64]))),
        "503, key in a text body": ("openai", False, Reply(status=503, body=f"<h1>down</h1> {key}".encode(), content_type="text/html")),
        "404, key lower-cased as code": ("openai", False, Reply(status=404, json=openai_error(404, key, code=key.lower()[:64]))),
        "429, key in message": ("openai", False, Reply(status=429, json=openai_error(429, f"slow down {key}"))),
        "200 with an error object": ("openai", False, Reply(json=openai_error(400, forms["base64"], type_="invalid_request_error", code=key.lower()))),
        "200 stream with an error object": ("openai", True, Reply(json=openai_error(400, forms["base64"], type_="invalid_request_error", code=key.lower()))),
        "stream error frame before any chunk": ("openai", True, Reply(sse=f"data: {json.dumps(stream_error)}\n\n".encode())),
        "stream error frame mid-stream": ("openai", True, Reply(sse=stream_failing_with(stream_error))),
        "anthropic 400": ("anthropic", False, Reply(status=400, json=anthropic_error(key.lower()[:30], key))),
        "anthropic 529": ("anthropic", False, Reply(status=529, json=anthropic_error("overloaded_error", forms["upper"]))),
        "anthropic stream error event": ("anthropic", True, Reply(sse=anthropic_failing_with(anthropic_error(forms["lower"][:60], forms["base64"])))),
    }  # fmt: skip


HOSTILE_CASES = list(hostile_replies("sk-placeholder"))


@pytest.mark.parametrize("case", HOSTILE_CASES)
async def test_no_form_of_the_provider_key_reaches_the_client_or_the_logs(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    hostile_key: str,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    kind, stream, reply = hostile_replies(hostile_key)[case]
    entry = {**provider_of(kind, upstream.base_url), "api_key_env": SECRET_ENV}
    client, _, creds = await make_gateway(**routed_to(entry))
    upstream.script(reply)
    caplog.set_level(logging.DEBUG)
    resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
    text = await resp.text()
    sent = upstream.last.header("x-api-key" if kind == "anthropic" else "Authorization")
    assert hostile_key in (sent or "")  # the upstream had the key to echo
    assert resp.status != 200 or "error" in text, text
    answer = text + "".join(f"{k}: {v}\n" for k, v in resp.headers.items())
    assert leaks(answer, hostile_key) == [], answer
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert [line for line in lines if leaks(line, hostile_key)] == []


async def test_a_safe_provider_code_and_param_are_relayed(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(**routed_to(provider_of("openai", upstream.base_url)))
    upstream.script(
        Reply(
            status=400,
            json=openai_error(
                400,
                "This model's maximum context length is 128000 tokens.",
                code="context_length_exceeded",
                param="messages[0].content",
            ),
        )
    )
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] == "validation_failed"
    assert body["message"] == "provider upstream rejected the request (context_length_exceeded)"
    assert body["param"] == "messages[0].content"
    assert "maximum context length" not in await resp.text()  # the provider's text: never


# ------------------------------------------------------------------- Retry-After

RETRY_AFTER_CAP = 60


def http_date(offset: float) -> str:
    return formatdate(time.time() + offset, usegmt=True)


HOSTILE_RETRY_AFTER = {
    "the provider key": PROVIDER_KEY,
    "seconds then the key": f"1; key={PROVIDER_KEY}",
    "a fraction": "1.5",
    "negative": "-1",
    "nan": "nan",
    "infinity": "inf",
    "an exponent": "1e3",
    "hex": "0x10",
    "non-ASCII digits": "\u0663",
    "two values": "3, 4",
    "a huge number": "9" * 40,
    "a loose date": "tomorrow at noon",
    "a date with the key": f"Sun, 06 Nov 1994 08:49:37 GMT {PROVIDER_KEY}",
}


@pytest.mark.parametrize("case", list(HOSTILE_RETRY_AFTER))
async def test_a_hostile_retry_after_is_never_relayed(
    make_gateway: GatewayFactory, upstream: FakeUpstream, case: str
) -> None:
    client, _, creds = await make_gateway(**routed_to(provider_of("openai", upstream.base_url)))
    value = HOSTILE_RETRY_AFTER[case]
    upstream.script(Reply(status=429, json=openai_error(429), headers={"Retry-After": value}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 429, await resp.text()
    sent = resp.headers.get("Retry-After")
    assert sent is None or re.fullmatch(r"[0-9]{1,2}", sent), sent
    assert sent != value
    assert_no_key("".join(f"{k}: {v}" for k, v in resp.headers.items()))


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("7", 7, 7),
        ("0", 0, 0),
        ("86400", RETRY_AFTER_CAP, RETRY_AFTER_CAP),  # capped
        # HTTP dates, as an offset from when the test runs (not from collection time:
        # a date 30 s ahead at collection is in the past minutes later).
        (30.0, 28, 31),
        (-3600.0, 0, 0),  # already past: retry now
        (1e6, RETRY_AFTER_CAP, RETRY_AFTER_CAP),
    ],
)
async def test_seconds_and_http_dates_are_relayed_as_capped_seconds(
    make_gateway: GatewayFactory, upstream: FakeUpstream, value: str | float, low: int, high: int
) -> None:
    if isinstance(value, float):
        value = http_date(value)
    client, _, creds = await make_gateway(**routed_to(provider_of("openai", upstream.base_url)))
    upstream.script(Reply(status=429, json=openai_error(429), headers={"Retry-After": value}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 429, await resp.text()
    assert low <= int(resp.headers["Retry-After"]) <= high, resp.headers["Retry-After"]


@pytest.mark.parametrize("value", ["5.0", "1e1", "9.999", "nan"])
async def test_a_retry_after_that_is_no_integer_is_not_waited_on(
    make_gateway: GatewayFactory, upstream: FakeUpstream, value: str
) -> None:
    """The gateway's own backoff (milliseconds here) replaces a value it does not accept."""
    client, _, creds = await make_gateway(**routed_to(provider_of("openai", upstream.base_url), 2))
    upstream.script(
        Reply(status=429, json=openai_error(429), headers={"Retry-After": value}),
        Reply(json=openai_completion()),
    )
    started = time.monotonic()
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    assert time.monotonic() - started < 2
    assert len(upstream.requests) == 2


# ------------------------------------------------------------------ request ids


async def wait_events(redis: Any, prefix: str, count: int) -> list[dict[str, Any]]:
    """The ledger's events once there are ``count`` (settles run after the answer)."""
    # A deadline, not asyncio.timeout: redis-py on Python 3.11 can swallow a cancellation.
    deadline = time.monotonic() + 5
    while True:
        events = await ledger_events(redis, prefix)
        if len(events) >= count:
            return events
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_gateway_id_is_its_own_and_the_clients_is_kept_apart(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, stream: bool
) -> None:
    """Two requests naming the same X-Request-Id: each gets its own gateway id (in
    the response, the completion id, the upstream's X-Request-Id and the ledger), and
    the client's value is kept as client_request_id."""
    client, config, creds = await make_gateway()
    headers = {**bearer(creds.key), "X-Request-Id": "client-dup-0001"}
    answers = []
    for _ in range(2):
        resp = await client.post(URL, json=chat_body(stream=stream), headers=headers)
        assert resp.status == 200
        answers.append((resp.headers, await resp.text()))
    ids = [h["X-Request-Id"] for h, _ in answers]
    assert len(set(ids)) == 2
    assert "client-dup-0001" not in ids
    assert [h["X-Client-Request-Id"] for h, _ in answers] == ["client-dup-0001"] * 2
    for (_, text), own in zip(answers, ids, strict=True):
        assert "client-dup-0001" not in text  # not the completion id either
        assert own in text
    sent = [r.header("X-Request-Id") for r in upstream.requests]
    assert sent == ids
    events = await wait_events(redis, config.gateway.redis.key_prefix, 2)
    assert sorted(e["request_id"] for e in events) == sorted(ids)
    assert [e["client_request_id"] for e in events] == ["client-dup-0001"] * 2


@pytest.mark.parametrize(
    "value",
    ["has space", "x" * 129, "<script>", "semi;colon", "caf\u00e9", PROVIDER_KEY + "\u00e9"],
)
async def test_an_unsafe_client_request_id_is_dropped(
    make_gateway: GatewayFactory, upstream: FakeUpstream, redis: Redis, value: str
) -> None:
    client, config, creds = await make_gateway()
    headers = {**bearer(creds.key), "X-Request-Id": value}
    resp = await client.post(URL, json=chat_body(), headers=headers)
    assert resp.status == 200
    assert "X-Client-Request-Id" not in resp.headers
    assert resp.headers["X-Request-Id"] != value
    [event] = await wait_events(redis, config.gateway.redis.key_prefix, 1)
    assert event["client_request_id"] is None


# ------------------------------------------------------- session tokens follow their key

USAGE = "/v1/projects/alpha/usage"


async def mint(client: Client, key: str, project: str = "alpha") -> Any:
    return await client.post(
        f"/v1/projects/{project}/session-tokens", json={"sub": "u-1"}, headers=bearer(key)
    )


def set_main_key(creds: Credentials, **fields: Any) -> None:
    def edit(data: dict[str, Any]) -> None:
        keys = data["orgs"]["acme"]["api_keys"]
        entry = next(k for k in keys if k["id"] == "key_main")
        entry.update(fields)

    edit_gateway_yaml(creds, edit)


def drop_main_key(creds: Credentials) -> None:
    def edit(data: dict[str, Any]) -> None:
        keys = data["orgs"]["acme"]["api_keys"]
        keys[:] = [k for k in keys if k["id"] != "key_main"]

    edit_gateway_yaml(creds, edit)


async def test_lowering_a_key_to_read_stops_its_tokens_spending(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    resp = await mint(client, creds.key)
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["token"]
    ok = await client.post(URL, json=chat_body(), headers=bearer(token))
    assert ok.status == 200, await ok.text()

    set_main_key(creds, scopes=["read"])
    assert reload_config(client.app) is True
    refused = await client.post(URL, json=chat_body(), headers=bearer(token))
    assert refused.status == 403, await refused.text()
    assert len(upstream.requests) == 1
    # The token's own scope (write) never included read: the key's read gives it none.
    assert (await client.get(USAGE, headers=bearer(token))).status == 403

    set_main_key(creds, scopes=["read", "write"])  # raised again: the token spends again
    assert reload_config(client.app) is True
    again = await client.post(URL, json=chat_body(), headers=bearer(token))
    assert again.status == 200, await again.text()


async def test_a_key_with_admin_scope_keeps_its_tokens_scopes(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    token = (await (await mint(client, creds.key)).json())["token"]
    set_main_key(creds, scopes=["admin"])
    assert reload_config(client.app) is True
    ok = await client.post(URL, json=chat_body(), headers=bearer(token))
    assert ok.status == 200, await ok.text()


async def test_a_removed_key_stops_its_tokens(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    token = (await (await mint(client, creds.key)).json())["token"]
    drop_main_key(creds)
    assert reload_config(client.app) is True
    resp = await client.post(URL, json=chat_body(), headers=bearer(token))
    assert resp.status == 401, await resp.text()
    assert upstream.requests == []


# ------------------------------------------------------- minting for a disabled project


async def test_no_token_is_minted_for_a_disabled_project(gateway: Gateway) -> None:
    client, _, creds = gateway
    resp = await mint(client, creds.key, project="sleepy")
    assert resp.status == 409, await resp.text()
    assert "token" not in await resp.json()


def test_the_cli_mints_no_token_for_a_disabled_project(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", redis_url)
    monkeypatch.setenv("GATEWAY_SESSION_SECRET", creds.env["GATEWAY_SESSION_SECRET"])
    argv = ["token", "mint", "--config", str(creds.config_dir), "--project", "sleepy"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no token printed
    assert "disabled" in captured.err
