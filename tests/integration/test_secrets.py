"""Secrets stay secret, credentials follow their key (README "Security").

A hostile or broken upstream must not get the provider key sent anywhere else, nor
make the gateway relay it (in an error text, a header); a malformed client request
must not be echoed back. Real fake upstreams over TCP, real Redis, the gateway
in-process (or a real ``gateway serve`` process where its logs are read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakeupstream import FakeUpstream, Reply
from tests.harness import PROVIDER_KEY, bearer, chat_body, provider_entry

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
