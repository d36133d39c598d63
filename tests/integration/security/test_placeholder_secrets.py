"""A real ``gateway serve`` refuses to start with a secret still set to a placeholder
of the example files (exit 2, one JSON log line naming the variable, never the value),
and starts once the secret is real."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import write_config
from tests.support.process import GatewayProcess

PLACEHOLDER = "change-me-to-at-least-32-random-characters"  # deploy/.env.example's


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_SESSION_SECRET", PLACEHOLDER),
        ("KARTA_OPERATOR_TOKEN", "REPLACE_ME_WITH_32_RANDOM_BYTES_BASE64"),
        ("TEST_PROVIDER_KEY", "REPLACE_ME"),
    ],
)
async def test_serve_refuses_a_placeholder_secret(
    tmp_path: Path, redis_url: str, variable: str, value: str
) -> None:
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", redis_url)
    creds.env[variable] = value
    gw = GatewayProcess(creds, tmp_path / "gateway.log")
    try:
        gw.launch()
        assert await gw.wait_exit(timeout=30) == 2
    finally:
        gw.kill()
    records = gw.records()
    assert len(records) == len(gw.log_lines()), "stderr is JSON lines only"
    (invalid,) = [r for r in records if r.get("msg") == "config invalid"]
    assert invalid["level"] == "error"
    reasons = [p["reason"] for p in invalid["problems"]]
    assert len(reasons) == 1
    assert variable in reasons[0]
    assert "placeholder" in reasons[0]
    assert value not in gw.log_text()
    assert not [r for r in records if r.get("msg") == "gateway listening"]


async def test_serve_starts_once_the_secret_is_real(tmp_path: Path, redis_url: str) -> None:
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", redis_url)
    creds.env["GATEWAY_SESSION_SECRET"] = "W7f0sm0Zk3Yx" * 4  # not a placeholder
    gw = GatewayProcess(creds, tmp_path / "gateway.log")
    try:
        await gw.start()
    finally:
        gw.kill()
