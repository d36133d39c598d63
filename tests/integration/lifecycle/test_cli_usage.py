"""``gateway usage`` (issue #12): costs in dollars, aligned columns, ``--json`` unchanged;
readable while the gateway is stopped (the embedded store too); an unreachable store
is one line and exit 1. Each command is a process of its own, against a real Redis
or the real embedded redis-server of a real ``gateway serve``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.serve.embedded_redis import LOCK_NAME, EmbeddedRedis
from gateway.usage_cli import dollars, redact
from tests.support.billing import report_row
from tests.support.harness import Credentials, bearer, chat_body, key_prefix, write_config
from tests.support.ports import free_port
from tests.support.process import GatewayProcess, gateway_cli
from tests.support.redis import tag, window_ids
from tests.support.upstream import FakeUpstream

COLUMNS = ("scope", "window", "dimension", "used", "reserved", "cap", "left", "resets at")
NUMERIC = {"used", "reserved", "cap", "left"}


def _usage(creds: Credentials, *extra: str) -> subprocess.CompletedProcess[str]:
    return gateway_cli(creds.env, "usage", "--config", str(creds.config_dir), *extra)


def _table(out: str) -> list[dict[str, str]]:
    """The rows of the table, by column; asserts every row lines up under its header
    (text columns start where their name starts, numbers end where theirs ends)."""
    lines = out.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("scope "))
    header, rows = lines[header_at], lines[header_at + 1 :]
    assert rows
    spans: list[tuple[str, int, int]] = []
    for name in COLUMNS:
        start = header.index(name)
        spans.append((name, start, start + len(name)))
    parsed = []
    for row in rows:
        cells = {}
        for name, start, end in spans:
            if name in NUMERIC:  # right-aligned: ends under the header's end
                assert row[end - 1] != " ", (name, row)
                assert row[end : end + 1] in ("", " "), (name, row)
                cells[name] = row[:end].rsplit(" ", 1)[-1]
            else:  # left-aligned: starts under the header's start
                assert row[start] != " ", (name, row)
                assert row[start - 1 : start] in ("", " "), (name, row)
                cells[name] = row[start:].split(" ", 1)[0]
        parsed.append(cells)
    return parsed


def _row(rows: list[dict[str, str]], scope: str, window: str, dim: str) -> dict[str, str]:
    return next(
        r for r in rows if (r["scope"], r["window"], r["dimension"]) == (scope, window, dim)
    )


def test_dollars_are_rounded_up_to_the_micro_dollar() -> None:
    assert dollars(1_234_000) == "$0.001234"
    assert dollars(1_234_001) == "$0.001235"  # a cost used is never shown lower
    assert dollars(50_000_000_000) == "$50.000000"
    assert dollars(1_234_567_000_000_000) == "$1,234,567.000000"
    assert dollars(0) == "$0.000000"


def test_a_redis_password_is_never_shown() -> None:
    assert redact("redis://user:s3cret@host:6380/0") == "redis://user:***@host:6380/0"
    assert redact("rediss://:s3cret@host/1") == "rediss://:***@host/1"
    assert redact("unix:///run/redis.sock") == "unix:///run/redis.sock"


async def test_the_table_shows_dollars_in_aligned_columns_and_json_stays_nano(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", redis_url)
    prefix, ids = key_prefix(creds), await window_ids(redis)
    month = f"{tag(prefix)}p:{ids['month']}"
    # 1,500 tokens used, 100 reserved; $0.001234 spent.
    await redis.hset(month, mapping={"u2": 1500, "r2": 100, "u3": 1_234_000})
    await redis.hset(f"{tag(prefix)}k:key_main:{ids['day']}", mapping={"u2": 7})

    done = _usage(creds, "--project", "alpha", "--key", "key_main")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = _table(done.stdout)
    cost = _row(rows, "project", "month", "cost_usd")
    assert (cost["used"], cost["reserved"], cost["cap"]) == ("$0.001234", "$0.000000", "-")
    tokens = _row(rows, "project", "month", "total_tokens")
    assert (tokens["used"], tokens["reserved"]) == ("1,500", "100")
    assert (tokens["cap"], tokens["left"]) == ("10,000,000", "9,998,400")
    assert "nano" not in done.stdout
    assert _row(rows, "project", "lifetime", "total_tokens")["resets at"] == "never"

    done = _usage(creds, "--project", "alpha", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    month_row = report_row(report, "project", "month")
    assert month_row["dimensions"]["cost_nano_usd"]["used"] == 1_234_000
    assert month_row["dimensions"]["total_tokens"] == {
        "used": 1500,
        "reserved": 100,
        "cap": 10_000_000,
    }


async def test_the_embedded_store_is_read_while_the_gateway_runs_and_once_it_stopped(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    data_dir = tmp_path / "redis-data"
    creds = write_config(
        tmp_path / "config",
        upstream.base_url,
        "",
        gateway={"redis": {"url": "", "data_dir": str(data_dir), "key_prefix": "emb"}},
    )
    gateway = GatewayProcess(creds, tmp_path / "gateway.log")
    try:
        await gateway.start()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                gateway.url("/v1/projects/alpha/chat/completions"),
                json=chat_body(),
                headers=bearer(creds.key),
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        running = _usage(creds, "--project", "alpha")
        assert running.returncode == 0, running.stderr
        assert "running gateway's embedded redis-server" in running.stdout
        assert _row(_table(running.stdout), "project", "month", "total_tokens")["used"] == "14"
        gateway.send(signal.SIGTERM)
        assert await gateway.wait_exit(20) == 0
    finally:
        gateway.kill()

    stopped = _usage(creds, "--project", "alpha")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stderr == ""
    assert f"the embedded store in {data_dir} (started for this read)" in stopped.stdout
    assert _row(_table(stopped.stdout), "project", "month", "total_tokens")["used"] == "14"
    # The server started for the read is gone, and the directory is free again.
    store = EmbeddedRedis(data_dir)
    assert not store.running()
    store.start(lock_wait=0)
    store.stop()


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_an_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path, as_json: bool) -> None:
    url = f"redis://admin:pa55word@127.0.0.1:{free_port()}/0"
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", url)
    done = _usage(creds, "--project", "alpha", *(["--json"] if as_json else []))
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("budget store unreachable: the Redis at redis://admin:***@")
    assert "REDIS_URL" in done.stderr
    assert "pa55word" not in done.stderr


def test_no_embedded_data_here_says_where_it_looked(tmp_path: Path) -> None:
    """Run from another directory than the gateway's, the relative data_dir holds
    nothing: said so, rather than a report of zeros (and nothing is created there)."""
    creds = write_config(
        tmp_path / "config",
        "http://127.0.0.1:9/v1",
        "",
        gateway={"redis": {"url": "", "data_dir": "relative/redis"}},
    )
    done = gateway_cli(
        creds.env, "usage", "--config", str(creds.config_dir), "--project", "alpha", cwd=tmp_path
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert f"no budget data in {tmp_path / 'relative' / 'redis'}" in done.stderr
    assert "relative to the directory the gateway starts in" in done.stderr
    assert not (tmp_path / "relative" / "redis" / LOCK_NAME).exists()
