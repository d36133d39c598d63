"""Test harness: a config directory per test, wired to a real Redis and a real fake upstream.

``write_config`` lays out gateway.yaml, projects and keys the way an operator would
(keys as digests only), and returns the plaintext credentials the tests use.
Every test gets its own Redis key prefix, so tests never see each other's budgets.
``edit_gateway_yaml`` and ``add_api_key`` change a written config (before a reload).
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import yaml
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from gateway.budget import BudgetStore
from gateway.config import Config, load_config
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


def upstream_override(base_url: str, **timeouts: float) -> dict[str, Any]:
    """A ``write_config(gateway=...)`` override: provider "upstream" at ``base_url``
    with these timeouts."""
    return {"providers": {"upstream": provider_entry(base_url, **timeouts)}}


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
        # Any free port: tests run many gateways at once (tests/support/process.py passes its
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


def chat_url(project: str = "alpha") -> str:
    """A project's chat completions path."""
    return f"/v1/projects/{project}/chat/completions"


async def post_chat(
    client: TestClient[Any, Any], creds: Credentials, body: dict[str, Any], project: str = "alpha"
) -> ClientResponse:
    """POST ``body`` to a project's chat completions with the write key of ``creds``."""
    return await client.post(chat_url(project), json=body, headers=bearer(creds.key))


def chat_body(text: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_clean(text: str, creds: Credentials) -> None:
    """No secret (provider keys, the session secret, any of ``creds``' keys) and no
    stack trace in a response body or a log."""
    for secret in (
        PROVIDER_KEY,
        BYOK_KEY,
        SESSION_SECRET,
        creds.key,
        creds.read_key,
        creds.revoked_key,
        creds.other_org_key,
    ):
        assert secret not in text
    assert "Traceback" not in text


def key_prefix(creds: Credentials) -> str:
    """The Redis key prefix of the config ``creds`` was written with."""
    return load_config(creds.config_dir, creds.env).gateway.redis.key_prefix


# ------------------------------------------------------------------------------ config edits


def edit_gateway_yaml(creds: Credentials, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite gateway.yaml after ``change`` mutated its parsed content."""
    path = creds.config_dir / "gateway.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def add_api_key(
    creds: Credentials, key_id: str, prefix: str, digest: str, scopes: list[str]
) -> None:
    """Add an API key (its digest) to org acme."""

    def change(data: dict[str, Any]) -> None:
        data["orgs"]["acme"]["api_keys"].append(
            {"id": key_id, "prefix": prefix, "sha256": digest, "scopes": scopes}
        )

    edit_gateway_yaml(creds, change)


# ------------------------------------------------------------------------ fixtures' types

# The test client of an in-process gateway (pytest-aiohttp's ``aiohttp_client``).
Client = TestClient[web.Request, web.Application]
# An in-process gateway (the ``gateway`` fixture): its test client, config, credentials.
Gateway = tuple[Client, Config, Credentials]
# ``make_gateway(projects=..., gateway=..., redis_url=...)``.
GatewayFactory = Callable[..., Awaitable[Gateway]]
# ``make_creds(limits=..., env=..., projects=..., gateway=...)``.
MakeCreds = Callable[..., Credentials]
# ``sdk(client, api_key, project="alpha")``: an OpenAI SDK client of the gateway.
SdkFactory = Callable[..., openai.AsyncOpenAI]
# ``make_store(ttl_s=..., timeout_s=..., url=..., prefix=...)``: a BudgetStore.
StoreFactory = Callable[..., BudgetStore]
