"""Test harness: a config directory per test, wired to a real Redis and a real fake upstream.

``write_config`` lays out gateway.yaml, projects and keys the way an operator would
(keys as digests only), and returns the plaintext credentials the tests use.
Every test gets its own Redis key prefix, so tests never see each other's budgets.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.budget import keys
from gateway.credentials import generate_key, mint_session_token

SESSION_SECRET = "test-session-secret-" + "x" * 24
PROVIDER_KEY = "sk-test-provider-key-DO-NOT-LEAK-0123456789"
BYOK_KEY = "sk-test-byok-key-DO-NOT-LEAK-9876543210"
# The one 401 body (karta profile), whatever check failed: the documented detail and a
# message an SDK's exception text carries.
UNAUTHORIZED = {
    "detail": "Unauthorized",
    "message": "Unauthorized: send an API key (kt_live_...) or a session token "
    "as 'Authorization: Bearer <credential>'",
}
# The operator's credential (POST /admin/reload), in every test gateway's environment.
OPERATOR_TOKEN = "test-operator-token-" + "o" * 24


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this test run handed out before: the
    kernel can give a just-closed ephemeral port again at once (a gateway's API port
    and its metrics port were once the same)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("test redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Credentials:
    config_dir: Path
    key: str  # org acme, scopes read+write
    key_id: str
    read_key: str  # org acme, read only
    revoked_key: str  # org acme, revoked
    other_org_key: str  # org globex
    env: dict[str, str]

    def session(self, project: str = "alpha", sub: str | None = "user-1", **kw: Any) -> str:
        ids = {"alpha": "prj_alpha", "beta": "prj_beta", "gamma": "prj_gamma"}
        return mint_session_token(
            SESSION_SECRET,
            org_id=kw.pop("org_id", "acme"),
            project_id=kw.pop("project_id", ids.get(project, project)),
            project_slug=project,
            sub=sub,
            **kw,
        )


def _project(pid: str, org: str, **over: Any) -> dict[str, Any]:
    project: dict[str, Any] = {
        "id": pid,
        "org": org,
        "models": {
            "default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]},
            "smart": {"routes": [{"provider": "upstream", "model": "gpt-4o"}]},
        },
        "max_output_tokens": 100,
        "budgets": {"project": {"month": {"total_tokens": 10_000_000}}},
    }
    project.update(over)
    return project


# The store timeout of the tests that measure failing fast (the shipped default).
STORE_TIMEOUT_FAST: dict[str, Any] = {"redis": {"timeout_ms": 300}}


def provider_entry(base_url: str, **timeouts: float) -> dict[str, Any]:
    """An openai-kind provider entry for gateway.yaml (harness-like, timeouts overridable)."""
    return {
        "kind": "openai",
        "base_url": base_url,
        "api_key_env": "TEST_PROVIDER_KEY",
        "timeouts": {"connect": 2, "first_byte": 2, "idle": 2, "total": 10, **timeouts},
    }


def write_config(
    root: Path,
    upstream_url: str,
    redis_url: str,
    *,
    projects: dict[str, dict[str, Any]] | None = None,
    gateway: dict[str, Any] | None = None,
) -> Credentials:
    """Write a config directory under ``root``; ``projects`` entries override the defaults."""
    keys = {name: generate_key() for name in ("key", "read", "revoked", "other")}
    gw: dict[str, Any] = {
        "redis": {
            "url": redis_url,
            "key_prefix": "t" + uuid.uuid4().hex[:12],
            # Roomy: a loaded CI machine can take a Redis round trip past 300 ms, and a
            # 503 would then hide what a test is about. Tests of the timeout itself set
            # their own (STORE_TIMEOUT_FAST).
            "timeout_ms": 1000,
        },
        # Short settle wait: tests that make Redis unreachable would otherwise wait the
        # default 10 s for background settle retries at every app teardown.
        "limits": {"reservation_ttl_seconds": 60, "settle_wait_seconds": 0.5},
        # Any free port: tests run many gateways at once (tests/process.py passes its
        # own --metrics-listen and scrapes it).
        "metrics": {"listen": "127.0.0.1:0"},
        # One attempt per target unless a test asks for retries: a scripted failure
        # must reach the client, not be retried away.
        "resilience": {"retries": {"attempts_per_target": 1, "backoff_base_ms": 10}},
        "providers": {
            "upstream": {
                "kind": "openai",
                "base_url": upstream_url,
                "api_key_env": "TEST_PROVIDER_KEY",
                "timeouts": {"connect": 2, "first_byte": 2, "idle": 2, "total": 10},
            },
            "demo": {"kind": "demo", "chunk_delay_ms": 0},
        },
        "prices": {
            "gpt-4o-mini": {"input": "0.15", "output": "0.60", "cached_input": "0.075"},
            "gpt-4o": {"input": "2.50", "output": "10.00"},
        },
        "orgs": {
            "acme": {
                "api_keys": [
                    {"id": "key_main", "prefix": keys["key"].prefix, "sha256": keys["key"].sha256, "scopes": ["read", "write"]},
                    {"id": "key_read", "prefix": keys["read"].prefix, "sha256": keys["read"].sha256, "scopes": ["read"]},
                    {"id": "key_revoked", "prefix": keys["revoked"].prefix, "sha256": keys["revoked"].sha256, "scopes": ["write"], "revoked": True},
                ]
            },
            "globex": {
                "api_keys": [
                    {"id": "key_globex", "prefix": keys["other"].prefix, "sha256": keys["other"].sha256, "scopes": ["write"]},
                ]
            },
        },
    }  # fmt: skip
    for section, values in (gateway or {}).items():
        if isinstance(values, dict) and isinstance(gw.get(section), dict):
            gw[section] = {**gw[section], **values}
        else:
            gw[section] = values
    all_projects = {
        "alpha": _project("prj_alpha", "acme"),
        "beta": _project("prj_beta", "acme", wire_profile="openai"),
        "gamma": _project("prj_gamma", "globex"),
        "sleepy": _project("prj_sleepy", "acme", enabled=False),
    }
    for slug, over in (projects or {}).items():
        base = copy.deepcopy(all_projects.get(slug) or _project(f"prj_{slug}", "acme"))
        base.update(over)
        all_projects[slug] = base
    root.mkdir(parents=True, exist_ok=True)
    (root / "projects").mkdir(exist_ok=True)
    (root / "gateway.yaml").write_text(yaml.safe_dump(gw, sort_keys=False))
    for slug, body in all_projects.items():
        (root / "projects" / f"{slug}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    env = {
        **os.environ,
        "GATEWAY_SESSION_SECRET": SESSION_SECRET,
        "TEST_PROVIDER_KEY": PROVIDER_KEY,
        "TEST_BYOK_KEY": BYOK_KEY,
        "KARTA_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }
    return Credentials(
        config_dir=root,
        key=keys["key"].secret,
        key_id="key_main",
        read_key=keys["read"].secret,
        revoked_key=keys["revoked"].secret,
        other_org_key=keys["other"].secret,
        env=env,
    )


def chat_body(text: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- reading what the gateway did

FIELDS = ("u0", "u1", "u2", "u3", "r0", "r1", "r2", "r3")  # used / reserved, by dimension


async def counter(redis: Any, key: str) -> dict[str, int]:
    """One budget counter hash (Redis or Redis Cluster client), every field present."""
    raw = await redis.hgetall(key)
    got = {k.decode(): int(v) for k, v in raw.items()}
    return {f: got.get(f, 0) for f in FIELDS}


async def wait_released(redis: Any, key: str, timeout: float = 5) -> dict[str, int]:  # noqa: ASYNC109
    """Poll until nothing is reserved on ``key`` (the settle ran); return the counter."""
    state = await counter(redis, key)
    try:
        async with asyncio.timeout(timeout):
            while any(state[f"r{d}"] for d in range(4)):
                await asyncio.sleep(0.02)
                state = await counter(redis, key)
    except TimeoutError:
        raise AssertionError(f"still reserved after {timeout} s on {key}: {state}") from None
    return state


async def month_counter(
    redis: Any, key_prefix: str, project_id: str = "prj_alpha"
) -> dict[str, int]:
    """The project's counter of the current UTC month (by Redis time)."""
    month = (await window_ids(redis))["month"]
    return await counter(redis, project_key(key_prefix, month, project_id))


async def scrape(client: Any, token: str = "") -> str:
    """The in-process gateway's /metrics, as its metrics listener serves it (the metrics
    app on a real socket of its own: the API port has no /metrics)."""
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from gateway.context import STATE
    from gateway.http.metrics_listener import metrics_app

    server = TestServer(metrics_app(client.server.app[STATE], token))
    await server.start_server()
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            ClientSession() as http,
            http.get(server.make_url("/metrics"), headers=headers) as resp,
        ):
            assert resp.status == 200
            return await resp.text()
    finally:
        await server.close()


async def metric(client: Any, name: str, **labels: str) -> float:
    """Sum of the /metrics samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(await scrape(client)):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def data_frames(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body: JSON objects, and "[DONE]" as a string."""
    out: list[Any] = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def tag(prefix: str, owner: str = "prj_alpha", kind: str = keys.PROJECT) -> str:
    """The key prefix, hash tag included, of a project's (or, kind "org", an org's) keys."""
    return keys.tag(prefix, owner, kind)


def project_key(prefix: str, window_id: str, project_id: str = "prj_alpha") -> str:
    """A project's counter in one window (``window_id``: see ``window_ids``)."""
    return keys.counter_key(tag(prefix, project_id), keys.PROJECT_COUNTER, window_id)


def held_records(prefix: str, owner: str = "prj_alpha", kind: str = keys.PROJECT) -> str:
    """The hash of an owner's reservation records (one field per hold in flight)."""
    return tag(prefix, owner, kind) + keys.RESERVATIONS


async def window_ids(redis: Any) -> dict[str, str]:
    """Today's window ids on the Redis server's clock (a client or a cluster client)."""
    seconds, _ = await redis.time()
    return keys.window_ids(float(seconds))


def parse_event(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One ledger stream entry: the usage event (JSON in field "event") plus "settled"
    (also reads flat field/value entries)."""
    if b"event" in fields:
        event = dict(json.loads(fields[b"event"]))
        event["settled"] = fields.get(b"settled", b"").decode()
        return event
    return {k.decode(): v.decode() for k, v in fields.items()}
