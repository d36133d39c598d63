"""Redis for the tests: a private redis-server, and reading what the gateway wrote
there (budget counters by window, held reservations, the usage ledger).

Every helper takes a client of Redis or of Redis Cluster (both answer the commands
used here). ``source`` arguments name a gateway's key prefix: the prefix itself, or a
loaded ``Config``, or the ``Credentials`` of a config directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from gateway.budget import keys
from gateway.config import Config
from tests.support.harness import Credentials, key_prefix
from tests.support.ports import free_port


def ping(port: int) -> bool:
    """True when a Redis server on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free port (used when REDIS_URL is unset)."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(f"/tmp/gw-test-redis-{self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from gateway.serve.embedded_redis import find_redis_server

        self.dir.mkdir(parents=True, exist_ok=True)
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir), *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if ping(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("test redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------- key names


def prefix_of(source: Config | Credentials | str) -> str:
    """The Redis key prefix of a gateway (see the module docstring)."""
    if isinstance(source, str):
        return source
    if isinstance(source, Config):
        return source.gateway.redis.key_prefix
    return key_prefix(source)


def tag(prefix: str, owner: str = "prj_alpha", kind: str = keys.PROJECT) -> str:
    """The key prefix, hash tag included, of a project's (or, kind "org", an org's) keys."""
    return keys.tag(prefix, owner, kind)


def project_key(
    source: Config | Credentials | str,
    window_id: str,
    project_id: str = "prj_alpha",
    part: str = keys.PROJECT_COUNTER,
) -> str:
    """A project's counter in one window (``window_id``: see ``window_ids``); ``part``
    names another counter of the project ("k:<key id>", ``keys.user_part(sub)``)."""
    return keys.counter_key(tag(prefix_of(source), project_id), part, window_id)


def held_records(prefix: str, owner: str = "prj_alpha", kind: str = keys.PROJECT) -> str:
    """The hash of an owner's reservation records (one field per hold in flight)."""
    return tag(prefix, owner, kind) + keys.RESERVATIONS


async def window_ids(redis: Any) -> dict[str, str]:
    """Today's window ids on the Redis server's clock (a client or a cluster client)."""
    seconds, _ = await redis.time()
    return keys.window_ids(float(seconds))


async def window_key(
    redis: Any,
    source: Config | Credentials | str,
    window: str = "lifetime",
    project_id: str = "prj_alpha",
) -> str:
    """The project's counter key in the current ``window`` ("day", "month", "lifetime")."""
    return project_key(source, (await window_ids(redis))[window], project_id)


async def project_keys(
    redis: Any, source: Config | Credentials | str, project_id: str = "prj_alpha"
) -> list[str]:
    """The project's counters of today, this month and its lifetime."""
    ids = await window_ids(redis)
    return [project_key(source, ids[w], project_id) for w in ("day", "month", "lifetime")]


# --------------------------------------------------------------------------------- counters

FIELDS = ("u0", "u1", "u2", "u3", "r0", "r1", "r2", "r3")  # used / reserved, by dimension


async def counter(redis: Any, key: str) -> dict[str, int]:
    """One budget counter hash, every field present."""
    raw = await redis.hgetall(key)
    got = {k.decode(): int(v) for k, v in raw.items()}
    return {f: got.get(f, 0) for f in FIELDS}


async def month_counter(
    redis: Any, source: Config | Credentials | str, project_id: str = "prj_alpha"
) -> dict[str, int]:
    """The project's counter of the current UTC month (by Redis time)."""
    return await counter(redis, await window_key(redis, source, "month", project_id))


async def wait_released(
    redis: Any,
    key: str,
    timeout: float = 5,  # noqa: ASYNC109
    *,
    until_used: bool = False,
) -> dict[str, int]:
    """Poll until nothing is reserved on ``key`` (the settle ran; with ``until_used``,
    also something used); return the counter."""
    # A deadline, not asyncio.timeout: a cancellation can be swallowed inside redis-py
    # on Python 3.11, and the loop would then never end.
    deadline = time.monotonic() + timeout
    while True:
        state = await counter(redis, key)
        if not any(state[f"r{d}"] for d in range(4)) and (state["u2"] or not until_used):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"still reserved after {timeout} s on {key}: {state}")
        await asyncio.sleep(0.02)


async def settled(
    redis: Any,
    source: Config | Credentials | str,
    window: str = "lifetime",
    project_id: str = "prj_alpha",
    *,
    timeout: float = 5,  # noqa: ASYNC109
    until_used: bool = False,
) -> dict[str, int]:
    """The project's counter in ``window`` once nothing is held on it any more."""
    key = await window_key(redis, source, window, project_id)
    return await wait_released(redis, key, timeout, until_used=until_used)


async def open_reservations(
    redis: Any, source: Config | Credentials | str, project_id: str = "prj_alpha"
) -> int:
    """How many holds of the project are in flight."""
    return int(await redis.hlen(held_records(prefix_of(source), project_id)))


async def get_int(redis: Any, key: str) -> int:
    """An integer value (a rate limit's theoretical arrival time...); the key must exist."""
    raw = await redis.get(key)
    assert raw is not None, f"no key {key}"
    return int(raw)


async def hash_text(redis: Any, key: str) -> dict[str, str]:
    """A hash, its fields and values decoded."""
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}


async def scored(redis: Any, key: str) -> list[tuple[bytes, float]]:
    """A sorted set's members with their scores, lowest first."""
    return [
        (member, float(score)) for member, score in await redis.zrange(key, 0, -1, withscores=True)
    ]


async def pause_writes(redis: Any, ms: int) -> None:
    """``CLIENT PAUSE ms WRITE``: the server answers reads, holds writes back."""
    await redis.execute_command("CLIENT", "PAUSE", str(ms), "WRITE")


async def unpause(redis: Any) -> None:
    await redis.execute_command("CLIENT", "UNPAUSE")


# ----------------------------------------------------------------------------------- ledger


async def stream_entries(
    redis: Any, key: str, *, newest: int | None = None
) -> list[tuple[str, dict[bytes, bytes]]]:
    """A stream's entries as (id, fields), oldest first; ``newest``: the last ones only,
    newest first."""
    raw = await (redis.xrange(key) if newest is None else redis.xrevrange(key, count=newest))
    return [(entry_id.decode(), dict(fields)) for entry_id, fields in raw]


def parse_event(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One ledger stream entry: the usage event (JSON in field "event") plus "settled"
    (also reads flat field/value entries)."""
    if b"event" in fields:
        event = dict(json.loads(fields[b"event"]))
        event["settled"] = fields.get(b"settled", b"").decode()
        return event
    return {k.decode(): v.decode() for k, v in fields.items()}


def flat(value: Any) -> str:
    """A ledger event value as text: None -> "", booleans -> "1"/"0"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_event_text(fields: dict[bytes, bytes]) -> dict[str, str]:
    """One stream entry: the usage event (JSON in field "event") and the settle's
    "settled" flag, every value as text (also reads flat field/value entries)."""
    if b"event" in fields:
        event = {k: flat(v) for k, v in json.loads(fields[b"event"]).items()}
        event.update({k.decode(): flat(v) for k, v in fields.items() if k != b"event"})
        return event
    return {k.decode(): flat(v) for k, v in fields.items()}


async def ledger_events(
    redis: Any,
    source: Config | Credentials | str,
    project_id: str = "prj_alpha",
    *,
    as_text: bool = False,
) -> list[dict[str, Any]]:
    """The project's ledger, oldest first (``parse_event``; ``as_text``:
    ``parse_event_text``)."""
    entries = await stream_entries(redis, tag(prefix_of(source), project_id) + keys.LEDGER)
    parse = parse_event_text if as_text else parse_event
    return [parse(fields) for _id, fields in entries]
