"""The API-key control plane over HTTP (issue #16), in one gateway on a real Redis:
create (the plaintext once), list (the config files' keys read-only), get, revoke,
rotate with a grace period; who may call (org admin, operator; another org 404, a key
without ``admin`` 403); Idempotency-Key; a Redis outage (API keys 503, YAML keys on).
Two processes on one Redis: tests/integration/control/test_control_processes.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import load_config
from gateway.http.app import create_app
from tests.keyadmin import Admins, add_admin_keys
from tests.support.harness import (
    OPERATOR_TOKEN,
    UNAUTHORIZED,
    Credentials,
    bearer,
    chat_body,
    write_config,
)
from tests.support.metrics import metric
from tests.support.redis import RedisServer
from tests.support.upstream import FakeUpstream

Client = TestClient[Any, Any]
KEYS = "/v1/orgs/acme/api-keys"
MODELS = "/v1/projects/alpha/models"
CHAT = "/v1/projects/alpha/chat/completions"


@dataclass
class Plane:
    client: Client
    creds: Credentials
    admins: Admins

    async def create(self, token: str | None = None, org: str = "acme", **body: Any) -> Any:
        resp = await self.client.post(
            f"/v1/orgs/{org}/api-keys",
            json={"name": "ci", **body},
            headers=bearer(token or self.admins.acme),
        )
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def listed(self, token: str | None = None) -> list[dict[str, Any]]:
        resp = await self.client.get(KEYS, headers=bearer(token or self.admins.acme))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["object"] == "list"
        return list(body["data"])

    async def status(self, key: str, path: str = MODELS) -> int:
        """The status of a GET of ``path`` (a POST of a chat call for a chat path)."""
        if path.endswith("/chat/completions"):
            resp = await self.client.post(path, json=chat_body(), headers=bearer(key))
        else:
            resp = await self.client.get(path, headers=bearer(key))
        await resp.read()
        return resp.status


MakePlane = Callable[..., Awaitable[Plane]]


@pytest.fixture
def make_plane(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, aiohttp_client: Any
) -> MakePlane:
    count = 0

    async def make(url: str = redis_url) -> Plane:
        nonlocal count
        count += 1
        creds = write_config(tmp_path / f"config{count}", upstream.base_url, url)
        admins = add_admin_keys(creds)
        config = load_config(creds.config_dir, creds.env)
        client = await aiohttp_client(create_app(config, url))
        return Plane(client, creds, admins)

    return make


@pytest.fixture
async def plane(make_plane: MakePlane) -> Plane:
    return await make_plane()


async def until_status(
    plane: Plane,
    key: str,
    status: int,
    within: float,
    path: str = MODELS,
) -> float:
    """Poll every 50 ms until ``key`` gets ``status``; the seconds it took."""
    started = time.monotonic()
    while True:
        if await plane.status(key, path) == status:
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < within, f"still not {status} after {elapsed:.2f} s"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------- create, list


async def test_a_created_key_works_at_once_and_its_plaintext_is_shown_once(plane: Plane) -> None:
    before = time.time()
    created = await plane.create(name="ci deploys", scopes=["read", "write"])
    secret = created["key"]
    assert secret.startswith("kt_live_")
    assert len(secret) == 40
    assert created["prefix"] == secret[:16]
    assert created["id"] == "ak_" + secret[8:16]
    assert created["source"] == "api"
    assert created["read_only"] is False
    assert created["status"] == "active"
    assert created["name"] == "ci deploys"
    assert created["scopes"] == ["read", "write"]
    assert before - 1 <= created["created_at"] <= time.time() + 1
    assert created["expires_at"] is None
    assert created["revoked_at"] is None
    assert "sha256" not in created

    # It works at once: a model list (read) and a chat call (write, billed to it).
    assert await plane.status(secret) == 200
    resp = await plane.client.post(
        "/v1/projects/alpha/chat/completions", json=chat_body(), headers=bearer(secret)
    )
    assert resp.status == 200, await resp.text()

    listed = await plane.listed()
    mine = [k for k in listed if k["id"] == created["id"]]
    assert len(mine) == 1
    assert {k: v for k, v in mine[0].items() if k != "last_used_at"} == {
        k: v for k, v in created.items() if k not in ("key", "last_used_at")
    }
    resp = await plane.client.get(f"{KEYS}/{created['id']}", headers=bearer(plane.admins.acme))
    assert resp.status == 200
    one = await resp.json()
    assert one["id"] == created["id"]
    assert "key" not in one
    # The plaintext is in no answer but the first.
    for path in (KEYS, f"{KEYS}/{created['id']}"):
        resp = await plane.client.get(path, headers=bearer(plane.admins.acme))
        text = await resp.text()
        assert secret not in text
        assert secret[16:] not in text
    assert resp.headers["Cache-Control"] == "no-store"


async def test_yaml_keys_are_listed_read_only_and_cannot_be_revoked_or_rotated(
    plane: Plane,
) -> None:
    listed = {k["id"]: k for k in await plane.listed()}
    assert {"key_main", "key_read", "key_revoked", "key_admin"} <= set(listed)
    assert "key_globex" not in listed
    assert "key_gx_admin" not in listed
    main = listed["key_main"]
    assert main["source"] == "yaml"
    assert main["read_only"] is True
    assert main["prefix"] == plane.creds.key[:16]
    assert main["scopes"] == ["read", "write"]
    assert main["status"] == "active"
    assert listed["key_revoked"]["status"] == "revoked"
    assert all("sha256" not in k for k in listed.values())

    for action in ("revoke", "rotate"):
        resp = await plane.client.post(
            f"{KEYS}/key_main/{action}", headers=bearer(plane.admins.acme)
        )
        assert resp.status == 409
        body = await resp.json()
        assert body["error"] == "key_managed_in_config"
        assert "config files" in body["message"]
        assert "orgs.acme.api_keys" in body["message"]
    assert await plane.status(plane.creds.key) == 200  # still works


async def test_create_validates_its_body(plane: Plane) -> None:
    bad: list[Any] = [
        {},  # no name
        {"name": ""},
        {"name": "x" * 129},
        {"name": "tab\there"},
        {"name": "ci", "scopes": []},
        {"name": "ci", "scopes": ["owner"]},
        {"name": "ci", "scopes": ["read", "read"]},
        {"name": "ci", "scopes": "read"},
        {"name": "ci", "expires_in_seconds": 10},
        {"name": "ci", "expires_in_seconds": True},
        {"name": "ci", "expires_at": int(time.time()) - 5},
        {"name": "ci", "expires_at": 1, "expires_in_seconds": 3600},
        {"name": "ci", "owner": "me"},  # an unknown field
        ["name", "ci"],
    ]
    for body in bad:
        resp = await plane.client.post(KEYS, json=body, headers=bearer(plane.admins.acme))
        assert resp.status == 422, (body, await resp.text())
        assert (await resp.json())["error"] == "validation_failed"
    resp = await plane.client.post(KEYS, data=b"{not json", headers={**bearer(plane.admins.acme)})
    assert resp.status == 422
    assert not [k for k in await plane.listed() if k["source"] == "api"]  # none created

    created = await plane.create(expires_in_seconds=3600, scopes=["read"])
    assert abs(created["expires_at"] - (time.time() + 3600)) < 5
    assert created["scopes"] == ["read"]
    # A read-only key lists models but cannot spend.
    assert await plane.status(created["key"]) == 200
    resp = await plane.client.post(
        "/v1/projects/alpha/chat/completions", json=chat_body(), headers=bearer(created["key"])
    )
    assert resp.status == 403


# ---------------------------------------------------------------------------- who may call


async def test_another_orgs_credentials_get_404_never_403(plane: Plane) -> None:
    created = await plane.create()
    key_path = f"{KEYS}/{created['id']}"
    for token in (plane.admins.globex, plane.creds.other_org_key):
        for method, path in (
            ("GET", KEYS),
            ("POST", KEYS),
            ("GET", key_path),
            ("POST", key_path + "/revoke"),
            ("POST", key_path + "/rotate"),
        ):
            resp = await plane.client.request(
                method, path, json={"name": "x"}, headers=bearer(token)
            )
            assert resp.status == 404, (method, path, await resp.text())
    # acme's admin: globex's keys, or a globex key asked for under acme, are 404 too.
    globex_key = await plane.create(token=plane.admins.globex, org="globex")
    resp = await plane.client.get("/v1/orgs/globex/api-keys", headers=bearer(plane.admins.acme))
    assert resp.status == 404
    for path in (f"{KEYS}/{globex_key['id']}", f"{KEYS}/{globex_key['id']}/revoke"):
        resp = await plane.client.request(
            "GET" if path.endswith(globex_key["id"]) else "POST",
            path,
            headers=bearer(plane.admins.acme),
        )
        assert resp.status == 404
    resp = await plane.client.get(f"{KEYS}/key_globex", headers=bearer(plane.admins.acme))
    assert resp.status == 404  # a YAML key of globex
    resp = await plane.client.get("/v1/orgs/nope/api-keys", headers=bearer(plane.admins.acme))
    assert resp.status == 404
    assert await plane.status(globex_key["key"], "/v1/projects/gamma/models") == 200


async def test_a_key_without_the_admin_scope_gets_403(plane: Plane) -> None:
    for token in (plane.creds.key, plane.creds.read_key):
        resp = await plane.client.get(KEYS, headers=bearer(token))
        assert resp.status == 403
        assert "admin" in (await resp.json())["message"]
        resp = await plane.client.post(KEYS, json={"name": "x"}, headers=bearer(token))
        assert resp.status == 403
    # A session token, even of the org: 403 (it is pinned to a project).
    resp = await plane.client.get(KEYS, headers=bearer(plane.creds.session()))
    assert resp.status == 403
    # An API-managed admin key manages the org's keys like a YAML one.
    admin = await plane.create(scopes=["admin"])
    listed = await plane.listed(token=admin["key"])
    assert admin["id"] in {k["id"] for k in listed}
    other = await plane.create(token=admin["key"])
    resp = await plane.client.post(f"{KEYS}/{other['id']}/revoke", headers=bearer(admin["key"]))
    assert resp.status == 200
    # ... and a non-admin API-managed key is refused.
    plain = await plane.create()
    resp = await plane.client.get(KEYS, headers=bearer(plain["key"]))
    assert resp.status == 403
    assert await metric(plane.client, "gateway_auth_failures_total", reason="insufficient_scope")


async def test_the_operator_token_manages_any_org_and_bad_credentials_get_401(
    plane: Plane,
) -> None:
    made = await plane.create(token=OPERATOR_TOKEN, org="globex", name="from the operator")
    assert await plane.status(made["key"], "/v1/projects/gamma/models") == 200
    assert await plane.status(made["key"]) == 404  # acme's project: another org's
    resp = await plane.client.get("/v1/orgs/globex/api-keys", headers=bearer(OPERATOR_TOKEN))
    assert made["id"] in {k["id"] for k in (await resp.json())["data"]}
    resp = await plane.client.get("/v1/orgs/nope/api-keys", headers=bearer(OPERATOR_TOKEN))
    assert resp.status == 404
    for headers in ({}, bearer(OPERATOR_TOKEN + "x"), bearer("kt_live_" + "A" * 32)):
        resp = await plane.client.get(KEYS, headers=headers)
        assert resp.status == 401
        assert await resp.json() == UNAUTHORIZED
    for token in (plane.creds.revoked_key, plane.creds.key[:-1] + "Z"):
        resp = await plane.client.get(KEYS, headers=bearer(token))
        assert resp.status == 401


# ---------------------------------------------------------------------------- revoke, rotate


async def test_a_revoked_key_stops_at_once_with_its_session_tokens(plane: Plane) -> None:
    created = await plane.create()
    key = created["key"]
    assert await plane.status(key) == 200  # cached now
    resp = await plane.client.post(
        "/v1/projects/alpha/session-tokens", json={"sub": "u-1"}, headers=bearer(key)
    )
    assert resp.status == 201
    token = (await resp.json())["token"]
    assert await plane.status(token, CHAT) == 200  # a session token: write scope only

    started = time.monotonic()
    resp = await plane.client.post(
        f"{KEYS}/{created['id']}/revoke", headers=bearer(plane.admins.acme)
    )
    assert resp.status == 200
    revoked = await resp.json()
    assert revoked["status"] == "revoked"
    assert revoked["revoked_at"] is not None
    await until_status(plane, key, 401, within=1.0)
    await until_status(plane, token, 401, within=1.0, path=CHAT)
    assert time.monotonic() - started < 1.0
    assert await metric(plane.client, "gateway_auth_failures_total", reason="revoked") >= 2

    # Revoking again changes nothing (the first revocation time stays).
    resp = await plane.client.post(
        f"{KEYS}/{created['id']}/revoke", headers=bearer(plane.admins.acme)
    )
    assert resp.status == 200
    assert (await resp.json())["revoked_at"] == revoked["revoked_at"]
    resp = await plane.client.post(
        f"{KEYS}/{created['id']}/revoke", json={"reason": "x"}, headers=bearer(plane.admins.acme)
    )
    assert resp.status == 422
    listed = {k["id"]: k for k in await plane.listed()}
    assert listed[created["id"]]["status"] == "revoked"
    resp = await plane.client.post(
        f"{KEYS}/{created['id']}/rotate", headers=bearer(plane.admins.acme)
    )
    assert resp.status == 409
    resp = await plane.client.post(f"{KEYS}/ak_00000000/revoke", headers=bearer(plane.admins.acme))
    assert resp.status == 404
    resp = await plane.client.post(f"{KEYS}/..%2F/revoke", headers=bearer(plane.admins.acme))
    assert resp.status == 404


async def test_rotation_keeps_the_old_key_for_its_grace_period_then_stops_it(
    plane: Plane,
) -> None:
    old = await plane.create(name="rotated", scopes=["read", "write"], expires_in_seconds=86_400)
    assert await plane.status(old["key"]) == 200
    rotate = f"{KEYS}/{old['id']}/rotate"
    for grace in (-1, 604_801, "60", None):
        resp = await plane.client.post(
            rotate, json={"grace_seconds": grace}, headers=bearer(plane.admins.acme)
        )
        assert resp.status == 422, grace
    resp = await plane.client.post(
        rotate, json={"grace_seconds": 2}, headers=bearer(plane.admins.acme)
    )
    assert resp.status == 201, await resp.text()
    rotated_at = time.monotonic()
    new = await resp.json()
    assert new["key"].startswith("kt_live_")
    assert new["key"] != old["key"]
    assert new["id"] != old["id"]
    assert new["rotated_from"] == old["id"]
    assert new["name"] == "rotated"
    assert new["scopes"] == ["read", "write"]
    assert new["expires_at"] == old["expires_at"]  # a rotation does not extend a key
    previous = new["previous"]
    assert previous["id"] == old["id"]
    assert previous["replaced_by"] == new["id"]
    assert abs(previous["expires_at"] - (time.time() + 2)) < 2
    assert "key" not in previous

    # During the grace period both work; after it only the new one.
    assert await plane.status(old["key"]) == 200
    assert await plane.status(new["key"]) == 200
    resp = await plane.client.post(rotate, headers=bearer(plane.admins.acme))
    assert resp.status == 409  # rotated already: rotate the new one
    await until_status(plane, old["key"], 401, within=5.0)
    assert time.monotonic() - rotated_at >= 1.0  # not before its grace ended
    assert await plane.status(new["key"]) == 200
    listed = {k["id"]: k for k in await plane.listed()}
    assert listed[old["id"]]["status"] == "expired"
    assert await metric(plane.client, "gateway_auth_failures_total", reason="expired") >= 1

    # The default grace is an hour; 0 stops the old key at once.
    resp = await plane.client.post(f"{KEYS}/{new['id']}/rotate", headers=bearer(plane.admins.acme))
    third = await resp.json()
    assert abs(third["previous"]["expires_at"] - (time.time() + 3600)) < 5
    resp = await plane.client.post(
        f"{KEYS}/{third['id']}/rotate", json={"grace_seconds": 0}, headers=bearer(plane.admins.acme)
    )
    fourth = await resp.json()
    assert resp.status == 201
    await until_status(plane, third["key"], 401, within=1.0)
    assert await plane.status(fourth["key"]) == 200


# ---------------------------------------------------------------------------- idempotency


async def test_mutating_calls_are_idempotent_under_an_idempotency_key(plane: Plane) -> None:
    headers = {**bearer(plane.admins.acme), "Idempotency-Key": "create-ci-1"}
    body = {"name": "ci", "scopes": ["read"]}
    first = await plane.client.post(KEYS, json=body, headers=headers)
    assert first.status == 201
    made = await first.json()
    assert made["key"].startswith("kt_live_")
    assert "Idempotent-Replayed" not in first.headers
    again = await plane.client.post(KEYS, json=body, headers=headers)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    replay = await again.json()
    assert replay["id"] == made["id"]
    assert replay["prefix"] == made["prefix"]
    assert replay["key"] is None  # the plaintext is shown once, never replayed
    assert {k: v for k, v in replay.items() if k != "key"} == {
        k: v for k, v in made.items() if k != "key"
    }
    resp = await plane.client.post(KEYS, json={**body, "name": "other"}, headers=headers)
    assert resp.status == 422  # the same key with another body
    assert (await resp.json())["param"] == "Idempotency-Key"
    # Another caller's same key is another call.
    other = await plane.client.post(
        KEYS, json=body, headers={**bearer(OPERATOR_TOKEN), "Idempotency-Key": "create-ci-1"}
    )
    assert other.status == 201
    assert (await other.json())["id"] != made["id"]

    # Concurrent twins: one key made, every answer names it.
    twins = {**bearer(plane.admins.acme), "Idempotency-Key": "create-twins"}
    answers = await asyncio.gather(
        *(plane.client.post(KEYS, json={"name": "twin"}, headers=twins) for _ in range(6))
    )
    bodies = [await r.json() for r in answers]
    assert {r.status for r in answers} == {201}
    assert len({b["id"] for b in bodies}) == 1
    assert sum(b["key"] is not None for b in bodies) == 1
    names = [k["name"] for k in await plane.listed() if k["source"] == "api"]
    assert names.count("ci") == 2
    assert names.count("twin") == 1

    # Rotate and revoke too: the retry gets the first answer, not a 409.
    for action, status in (("rotate", 201), ("revoke", 200)):
        target = made["id"] if action == "rotate" else replay["id"]
        h = {**bearer(plane.admins.acme), "Idempotency-Key": f"{action}-1"}
        path = f"{KEYS}/{target}/{action}"
        one = await plane.client.post(path, headers=h)
        two = await plane.client.post(path, headers=h)
        assert one.status == two.status == status, await two.text()
        b1, b2 = await one.json(), await two.json()
        assert b1["id"] == b2["id"]
        assert two.headers["Idempotent-Replayed"] == "true"
        if action == "rotate":
            assert b1["key"] is not None
            assert b2["key"] is None
    resp = await plane.client.post(
        KEYS, json=body, headers={**bearer(plane.admins.acme), "Idempotency-Key": "bad key"}
    )
    assert resp.status == 422


# ---------------------------------------------------------------------------- store outage


async def test_a_redis_outage_answers_503_for_api_keys_and_yaml_keys_keep_working(
    make_plane: MakePlane,
) -> None:
    server = RedisServer()
    server.start()
    try:
        plane = await make_plane(server.url)
        created = await plane.create()
        assert await plane.status(created["key"]) == 200
    finally:
        server.stop()
    await asyncio.sleep(1.1)  # past the cache's second
    resp = await plane.client.get(MODELS, headers=bearer(created["key"]))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert plane.creds.key not in await resp.text()
    assert await plane.status(plane.creds.key) == 200  # a YAML key: no Redis on its path
    assert await plane.status("kt_live_" + "B" * 32) == 503  # unknown, and not cacheable
    resp = await plane.client.get(KEYS, headers=bearer(plane.admins.acme))
    assert resp.status == 503


async def test_last_used_is_recorded_for_api_and_yaml_keys(plane: Plane) -> None:
    created = await plane.create()
    assert await plane.status(created["key"]) == 200
    assert await plane.status(plane.creds.key) == 200
    deadline = time.monotonic() + 6
    while True:
        listed = {k["id"]: k for k in await plane.listed()}
        used = [listed[created["id"]]["last_used_at"], listed["key_main"]["last_used_at"]]
        if all(used):
            break
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.2)
    assert all(abs(u - time.time()) < 10 for u in used)
    assert listed["key_read"]["last_used_at"] is None


async def test_an_api_managed_admin_key_cannot_reload_the_gateway(plane: Plane) -> None:
    """/admin/reload needs the operator token: a valid API-managed admin key is a 403
    (a credential the gateway knows, not the operator's), not a 401."""
    created = await plane.create(name="ops", scopes=["read", "write", "admin"])
    resp = await plane.client.post("/admin/reload", headers=bearer(created["key"]))
    assert resp.status == 403, await resp.text()
    assert "operator token" in (await resp.json())["detail"]
