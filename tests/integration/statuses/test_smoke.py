from __future__ import annotations

from tests.support.harness import Gateway, bearer, chat_body
from tests.support.upstream import FakeUpstream


async def test_unary_roundtrip(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(
        "/v1/projects/alpha/chat/completions", json=chat_body(), headers=bearer(creds.key)
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "default"
    assert body["usage"]["prompt_tokens"] == 11
    sent = upstream.last
    assert sent.json()["model"] == "gpt-4o-mini"
    assert sent.header("Authorization") == "Bearer sk-test-provider-key-DO-NOT-LEAK-0123456789"
