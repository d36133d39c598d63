"""Secrets stay secret, credentials follow their key (README "Security").

A hostile or broken upstream must not get the provider key sent anywhere else, nor
make the gateway relay it (in an error text, a header); a malformed client request
must not be echoed back. Real fake upstreams over TCP, real Redis, the gateway
in-process (or a real ``gateway serve`` process where its logs are read).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeupstream import FakeUpstream, Reply
from tests.harness import PROVIDER_KEY, bearer, chat_body, provider_entry, write_config
from tests.process import GatewayProcess

URL = "/v1/projects/alpha/chat/completions"


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeUpstream]:
    """A second origin: where a hostile upstream redirects to. It records what it got."""
    fake = FakeUpstream()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


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
    make_gateway: Any, upstream: FakeUpstream, elsewhere: FakeUpstream, kind: str, stream: bool
) -> None:
    client, _, creds = await make_gateway(**routed_to(provider_of(kind, upstream.base_url), 2))
    target = elsewhere.base_url + ("/messages" if kind == "anthropic" else "/chat/completions")
    upstream.script(*[Reply(status=307, headers={"Location": target})] * 2)
    resp = await client.post(URL, json=chat_body(stream=stream), headers=bearer(creds.key))
    text = await resp.text()
    assert resp.status == 502, text
    assert resp.content_type == "application/json"
    assert elsewhere.requests == [], [r.headers for r in elsewhere.requests]
    assert_no_key(text)
    assert target not in text
    assert "Location" not in resp.headers
    # Retried (a 502 may be transient) at the configured URL only, never the Location.
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status", [301, 302, 303, 308, 300, 304])
async def test_every_3xx_is_a_502(
    make_gateway: Any, upstream: FakeUpstream, elsewhere: FakeUpstream, status: int
) -> None:
    client, _, creds = await make_gateway(**routed_to(provider_of("azure", upstream.base_url)))
    upstream.script(Reply(status=status, headers={"Location": elsewhere.base_url + "/x"}))
    resp = await client.post(URL, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 502, await resp.text()
    assert elsewhere.requests == []


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
        assert status_line.split(b" ")[1] == b"400", (name, answer[:300])
        assert b"content-type: application/json" in head.lower(), (name, head)
        assert b"x-request-id:" in head.lower(), (name, head)
        assert set(json.loads(body)) == {"detail"}, (name, body)
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
