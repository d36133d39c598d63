"""A provider key variable that is unset or empty (issue #12): one warning per variable
at start, and requests routed there answer 503 provider_key_not_configured naming the
provider and the variable, before anything is sent upstream, without retries, and
without opening the circuit breaker. The real ``gateway serve`` (two workers: the
warning must not come once per worker), a real Redis, the fake upstream over TCP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.support.harness import (
    PROVIDER_KEY,
    Credentials,
    bearer,
    chat_body,
    provider_entry,
    write_config,
)
from tests.support.metrics import sample_sum
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeUpstream

CHAT = "/v1/projects/{}/chat/completions"


def _without_keys(creds: Credentials) -> Credentials:
    creds.env.pop("TEST_PROVIDER_KEY", None)  # the gateway's key for "upstream": unset
    creds.env["EMPTY_BYOK_KEY"] = ""  # alpha's own key: set, but empty
    creds.env["OTHER_PROVIDER_KEY"] = PROVIDER_KEY  # set: neither warned about nor logged
    return creds


def _key_warnings(gateway: GatewayProcess) -> list[dict[str, Any]]:
    return [r for r in gateway.records() if r["level"] == "warning" and "variable" in r]


async def _retries(http: aiohttp.ClientSession, gateway: GatewayProcess) -> float:
    async with http.get(gateway.metrics_url) as resp:
        return sample_sum(await resp.text(), "gateway_upstream_retries_total")


async def test_an_unset_provider_key_is_a_503_naming_it_and_one_warning_at_start(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str
) -> None:
    root = tmp_path
    other = {**provider_entry(upstream.base_url), "api_key_env": "OTHER_PROVIDER_KEY"}
    creds = _without_keys(
        write_config(
            root / "config",
            upstream.base_url,
            redis_url,
            gateway={
                # Retries and a breaker that opens at the first failure: neither may act.
                "resilience": {
                    "retries": {"attempts_per_target": 3, "backoff_base_ms": 10},
                    "breaker": {"failure_threshold": 1, "cooldown_seconds": 60},
                },
                "providers": {
                    "upstream": provider_entry(upstream.base_url),
                    "other": other,
                    "demo": {"kind": "demo", "chunk_delay_ms": 0},
                },
                "prices": {"gpt-4o-mini": {"input": "0.15", "output": "0.60"}},
            },
            projects={
                "alpha": {
                    "provider_keys": {"upstream": "EMPTY_BYOK_KEY"},
                    "models": {"default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]}},
                },
                "beta": {"models": {"default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]}}},
                "delta": {"models": {"default": {"routes": [{"provider": "demo", "model": "demo-1"}]}}},
            },
        )
    )  # fmt: skip
    gateway = GatewayProcess(creds, root / "gateway.log", workers=2)
    try:
        await gateway.start()
        warnings = _key_warnings(gateway)
        assert sorted((r["provider"], r["variable"], r.get("project")) for r in warnings) == [
            ("upstream", "EMPTY_BYOK_KEY", "alpha"),
            ("upstream", "TEST_PROVIDER_KEY", None),
        ], warnings
        assert all("has no key configured" in r["msg"] for r in warnings)
        assert PROVIDER_KEY not in gateway.log_text()

        async with aiohttp.ClientSession() as http:
            for _ in range(3):  # past failure_threshold: still this 503, no "circuit open"
                async with http.post(
                    gateway.url(CHAT.format("beta")), json=chat_body(), headers=bearer(creds.key)
                ) as resp:
                    assert resp.status == 503, await resp.text()
                    assert resp.headers["x-should-retry"] == "false"
                    body = await resp.json()
                # beta answers in the openai profile: OpenAI's error object.
                assert body["error"]["code"] == "provider_key_not_configured"
                assert body["error"]["type"] == "service_unavailable"
                assert body["error"]["provider"] == "upstream"
                assert body["error"]["message"] == (
                    "provider upstream has no key configured (TEST_PROVIDER_KEY is not set)"
                )
                async with http.post(
                    gateway.url(CHAT.format("alpha")),
                    json=chat_body(stream=True),
                    headers=bearer(creds.key),
                ) as resp:
                    assert resp.status == 503, await resp.text()
                    body = await resp.json()
                assert body == {
                    "error": "provider_key_not_configured",
                    "provider": "upstream",
                    "message": "provider upstream has no key configured (EMPTY_BYOK_KEY is not set)",
                }
            assert upstream.requests == []  # nothing went out with an empty key
            assert await _retries(http, gateway) == 0
            async with http.post(
                gateway.url(CHAT.format("delta")), json=chat_body(), headers=bearer(creds.key)
            ) as resp:
                assert resp.status == 200, await resp.text()  # the rest serves on
        # Once at start, whatever served since (and with two workers).
        assert len(_key_warnings(gateway)) == 2
    finally:
        gateway.kill()


async def test_a_target_without_its_key_falls_back_to_the_next(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str
) -> None:
    """An alias whose first target's key is unset is served by its next target (its
    own key): nothing is sent with an empty key, and the answer is the fallback's."""
    creds = write_config(
        tmp_path / "cfg",
        upstream.base_url,
        redis_url,
        gateway={
            "providers": {
                "keyless": {**provider_entry(upstream.base_url), "api_key_env": "UNSET_KEY"},
                "upstream": provider_entry(upstream.base_url),
            }
        },
        projects={
            "alpha": {
                "models": {
                    "default": {
                        "routes": [
                            {"provider": "keyless", "model": "gpt-4o"},
                            {"provider": "upstream", "model": "gpt-4o-mini"},
                        ]
                    }
                }
            }
        },
    )
    creds.env.pop("UNSET_KEY", None)
    gateway = GatewayProcess(creds, tmp_path / "gateway.log")
    try:
        await gateway.start(timeout=30)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                gateway.url(CHAT.format("alpha")), json=chat_body(), headers=bearer(creds.key)
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        (sent,) = upstream.requests
        assert sent.json()["model"] == "gpt-4o-mini"
        assert sent.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    finally:
        gateway.kill()
