"""Credentials end to end through HTTP (DESIGN section 3): API keys and session tokens.

Every rejected credential is a 401 with one body for every cause, counted in
``gateway_auth_failures_total{reason=...}``; a valid credential on the wrong project
is 403, on another org's project 404 (default deny).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import yaml

from gateway.credentials import generate_key
from gateway.serve.lifecycle import reload_config
from tests.support.harness import (
    PROVIDER_KEY,
    SESSION_SECRET,
    UNAUTHORIZED,
    Client,
    Credentials,
    Gateway,
    GatewayFactory,
    assert_clean,
    bearer,
    chat_body,
    chat_url,
)
from tests.support.metrics import by_label, scrape
from tests.support.upstream import FakeUpstream


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64json(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def claims(**over: Any) -> dict[str, Any]:
    """Claims of a valid session token for acme/alpha, overridable (None removes)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "org_id": "acme",
        "project_id": "prj_alpha",
        "project_slug": "alpha",
        "scope": "write",
        "sub": "user-1",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hand_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand: HMAC-SHA256 over the signing input with ``key``, or no signature."""
    signing_input = f"{_b64json(header)}.{_b64json(payload)}"
    signature = "" if key is None else _b64(hmac.digest(key, signing_input.encode(), "sha256"))
    return f"{signing_input}.{signature}"


def revoke_on_disk(creds: Credentials) -> None:
    """Mark the main key revoked in the config files (applied by the next reload)."""
    path = creds.config_dir / "gateway.yaml"
    config = yaml.safe_load(path.read_text())
    for entry in config["orgs"]["acme"]["api_keys"]:
        if entry["id"] == creds.key_id:
            entry["revoked"] = True
    path.write_text(yaml.safe_dump(config, sort_keys=False))


async def auth_failures(client: Client) -> dict[str, float]:
    return by_label(await scrape(client), "gateway_auth_failures_total", "reason")


async def assert_unauthorized(resp: Any, creds: Credentials) -> None:
    text = await resp.text()
    assert resp.status == 401, text
    assert resp.content_type == "application/json"
    assert await resp.json() == UNAUTHORIZED
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert_clean(text, creds)


# --------------------------------------------------------------------------- valid tokens


async def test_valid_session_token_works(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(
        chat_url("alpha"), json=chat_body(), headers=bearer(creds.session("alpha"))
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "default"
    assert len(upstream.requests) == 1
    # The session token is the client's credential: it never goes upstream.
    assert upstream.last.header("Authorization") == f"Bearer {PROVIDER_KEY}"


async def test_session_token_works_with_project_id_as_ref(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    resp = await client.post(
        chat_url("prj_alpha"), json=chat_body(), headers=bearer(creds.session("alpha"))
    )
    assert resp.status == 200, await resp.text()


async def test_session_token_sub_is_the_end_user_for_per_user_caps(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """The token's ``sub`` is the end user: per-user caps count each sub separately."""
    client, _, creds = await make_gateway(
        projects={"alpha": {"budgets": {"per_user": {"day": {"total_tokens": 140}}}}}
    )
    # Worst case of chat_body(): input bound 33 + output ceiling 100 = 133 <= 140.
    # The fake reports 11 + 3 = 14 used, so a second request would need 14 + 133 > 140.
    user1 = bearer(creds.session("alpha", sub="user-1"))
    first = await client.post(chat_url("alpha"), json=chat_body(), headers=user1)
    assert first.status == 200, await first.text()

    again = await client.post(chat_url("alpha"), json=chat_body(), headers=user1)
    assert again.status == 402, await again.text()
    refusal = await again.json()
    assert refusal["error"] == "budget_exhausted"
    assert refusal["scope"] == "user"
    assert "per-user daily total_tokens cap" in refusal["reason"]
    assert refusal["used"] == 14

    user2 = bearer(creds.session("alpha", sub="user-2"))
    other = await client.post(chat_url("alpha"), json=chat_body(), headers=user2)
    assert other.status == 200, await other.text()
    assert len(upstream.requests) == 2


async def test_globex_session_token_works_on_globex_project(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    token = creds.session("gamma", org_id="globex")
    resp = await client.post(chat_url("gamma"), json=chat_body(), headers=bearer(token))
    assert resp.status == 200, await resp.text()


async def test_session_token_minted_over_http_works_end_to_end(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """A write-scoped key mints a token for one end user; the token then calls the model."""
    client, _, creds = gateway
    minted = await client.post(
        "/v1/projects/alpha/session-tokens", json={"sub": "user-9"}, headers=bearer(creds.key)
    )
    assert minted.status == 201, await minted.text()
    grant = await minted.json()
    assert grant["token_type"] == "Bearer"
    assert grant["project_id"] == "prj_alpha"
    assert grant["sub"] == "user-9"
    token = grant["token"]
    decoded = jwt.decode(token, SESSION_SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "user-9"
    assert decoded["org_id"] == "acme"
    assert decoded["exp"] == grant["expires_at"]

    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    assert resp.status == 200, await resp.text()
    other = await client.post(chat_url("beta"), json=chat_body(), headers=bearer(token))
    assert other.status == 403, await other.text()
    assert len(upstream.requests) == 1


async def test_read_only_key_cannot_mint_session_tokens(gateway: Gateway) -> None:
    client, _, creds = gateway
    resp = await client.post(
        "/v1/projects/alpha/session-tokens", json={"sub": "u"}, headers=bearer(creds.read_key)
    )
    assert resp.status == 403, await resp.text()
    assert set(await resp.json()) == {"detail", "message"}


async def test_session_token_cannot_mint_session_tokens(gateway: Gateway) -> None:
    client, _, creds = gateway
    resp = await client.post(
        "/v1/projects/alpha/session-tokens",
        json={"sub": "u"},
        headers=bearer(creds.session("alpha")),
    )
    assert resp.status == 403, await resp.text()
    assert set(await resp.json()) == {"detail", "message"}


# --------------------------------------------------------------------------- rejected (401)


def _hs512(payload: dict[str, Any]) -> str:
    """Signed with the right secret but an algorithm the config does not allow."""
    with warnings.catch_warnings():
        # PyJWT 2.11+ warns that a 44-byte key is short for HS512 (its InsecureKeyLengthWarning;
        # older releases, down to the declared floor, have no such class).
        warnings.simplefilter("ignore", UserWarning)
        return jwt.encode(payload, SESSION_SECRET, algorithm="HS512")


HeaderMaker = Callable[[Credentials], dict[str, str]]

REJECTED: dict[str, tuple[HeaderMaker, str]] = {
    "missing_header": (lambda c: {}, "missing"),
    "non_bearer_scheme": (lambda c: {"Authorization": f"Basic {c.key}"}, "malformed"),
    "garbage_token": (lambda c: bearer("garbage"), "malformed"),
    "unknown_key": (lambda c: bearer(generate_key().secret), "unknown_key"),
    "revoked_key": (lambda c: bearer(c.revoked_key), "revoked"),
    "expired_token": (
        lambda c: bearer(c.session("alpha", now=time.time() - 3600, ttl_seconds=900)),
        "expired",
    ),
    "wrong_secret": (
        lambda c: bearer(jwt.encode(claims(), "another-secret-" + "y" * 32, algorithm="HS256")),
        "bad_signature",
    ),
    "alg_none": (
        lambda c: bearer(hand_token({"alg": "none", "typ": "JWT"}, claims(), None)),
        "bad_algorithm",
    ),
    "alg_rs256_header_hmac_signed": (
        lambda c: bearer(
            hand_token({"alg": "RS256", "typ": "JWT"}, claims(), SESSION_SECRET.encode())
        ),
        "bad_algorithm",
    ),
    "hs512_not_in_config": (lambda c: bearer(_hs512(claims())), "bad_algorithm"),
    "missing_project_id": (
        lambda c: bearer(jwt.encode(claims(project_id=None), SESSION_SECRET, algorithm="HS256")),
        "missing_claim",
    ),
    "missing_exp": (
        lambda c: bearer(jwt.encode(claims(exp=None), SESSION_SECRET, algorithm="HS256")),
        "missing_claim",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_rejected_credential_is_401_and_counted(
    gateway: Gateway, upstream: FakeUpstream, case: str
) -> None:
    client, _, creds = gateway
    make_headers, reason = REJECTED[case]
    before = await auth_failures(client)
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=make_headers(creds))
    await assert_unauthorized(resp, creds)
    after = await auth_failures(client)
    assert after.get(reason, 0) == before.get(reason, 0) + 1, after
    assert sum(after.values()) == sum(before.values()) + 1, after
    assert upstream.requests == []


async def test_alg_none_token_with_valid_claims_for_every_case_variant(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    for alg in ("none", "None", "NONE"):
        token = hand_token({"alg": alg, "typ": "JWT"}, claims(), None)
        resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
        await assert_unauthorized(resp, creds)
    assert upstream.requests == []


async def test_token_not_yet_valid_is_rejected(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    future = int(time.time()) + 3600
    token = jwt.encode(
        claims(iat=future, nbf=future, exp=future + 900), SESSION_SECRET, algorithm="HS256"
    )
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    await assert_unauthorized(resp, creds)
    assert upstream.requests == []


async def test_tampered_claims_break_the_signature(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    token = creds.session("alpha")
    header, _, signature = token.split(".")
    forged = f"{header}.{_b64json(claims(project_id='prj_beta', project_slug='beta'))}.{signature}"
    resp = await client.post(chat_url("beta"), json=chat_body(), headers=bearer(forged))
    await assert_unauthorized(resp, creds)
    assert (await auth_failures(client)).get("bad_signature") == 1
    assert upstream.requests == []


# --------------------------------------------------------------------------- wrong project / org


async def test_session_token_for_another_project_is_403_and_counted(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    resp = await client.post(
        chat_url("beta"), json=chat_body(), headers=bearer(creds.session("alpha"))
    )
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert set(body) == {"detail", "message"}
    assert (await auth_failures(client)).get("wrong_project") == 1
    assert upstream.requests == []


async def test_read_scoped_session_token_is_403_and_counted(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    token = creds.session("alpha", scope="read")
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    assert resp.status == 403, await resp.text()
    assert set(await resp.json()) == {"detail", "message"}
    assert (await auth_failures(client)).get("insufficient_scope") == 1
    assert upstream.requests == []


async def test_read_only_key_is_403_and_counted(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.read_key))
    assert resp.status == 403, await resp.text()
    assert set(await resp.json()) == {"detail", "message"}
    assert (await auth_failures(client)).get("insufficient_scope") == 1
    assert upstream.requests == []


async def test_session_token_for_another_orgs_project_is_404(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    # Signed by the gateway, but org acme pinned to globex's project gamma: default deny.
    token = creds.session("gamma")
    resp = await client.post(chat_url("gamma"), json=chat_body(), headers=bearer(token))
    assert resp.status == 404, await resp.text()
    assert set(await resp.json()) == {"detail", "message"}
    assert upstream.requests == []


async def test_globex_session_token_on_acme_project_is_404(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    token = creds.session("gamma", org_id="globex")
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    assert resp.status == 404, await resp.text()
    assert set(await resp.json()) == {"detail", "message"}
    assert upstream.requests == []


async def test_acme_key_on_globex_project_is_404(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(chat_url("gamma"), json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 404, await resp.text()
    assert set(await resp.json()) == {"detail", "message"}
    assert upstream.requests == []


async def test_globex_key_on_acme_project_is_404(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(
        chat_url("alpha"), json=chat_body(), headers=bearer(creds.other_org_key)
    )
    assert resp.status == 404, await resp.text()
    ok = await client.post(chat_url("gamma"), json=chat_body(), headers=bearer(creds.other_org_key))
    assert ok.status == 200, await ok.text()
    assert len(upstream.requests) == 1


# --------------------------------------------------------------------------- revocation


async def test_revoked_key_fails_at_once(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _, creds = gateway
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.revoked_key))
    await assert_unauthorized(resp, creds)
    assert (await auth_failures(client)).get("revoked") == 1
    assert upstream.requests == []


async def test_key_revoked_by_config_reload_fails_on_the_next_request(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    ok = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    assert ok.status == 200, await ok.text()

    revoke_on_disk(creds)
    assert reload_config(client.app) is True  # what SIGHUP runs

    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    await assert_unauthorized(resp, creds)
    assert len(upstream.requests) == 1


async def test_key_digest_only_in_config(gateway: Gateway) -> None:
    """The config the gateway reads holds the key's digest and prefix, never the key."""
    _, _, creds = gateway
    text = (creds.config_dir / "gateway.yaml").read_text()
    assert creds.key not in text
    assert hashlib.sha256(creds.key.encode()).hexdigest() in text


# ------------------------------------------------------------ tokens minted by an API key


async def _mint(client: Client, key: str, **body: Any) -> str:
    resp = await client.post("/v1/projects/alpha/session-tokens", json=body, headers=bearer(key))
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


async def test_tokens_minted_by_a_key_spend_within_that_keys_caps_and_limits(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """A key's per-key caps and rate limits hold for the session tokens it mints, or
    minting tokens would bypass them (they did: 402 for the key, 200 for its tokens)."""
    client, _, creds = await make_gateway(
        projects={"alpha": {"budgets": {"per_key": {"day": {"total_tokens": 140}}}}}
    )
    ok = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    assert ok.status == 200  # 14 used; a second worst case (133) no longer fits 140
    refused = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    assert refused.status == 402
    assert (await refused.json())["scope"] == "key"
    for sub in (None, "user-7"):
        token = await _mint(client, creds.key, **({"sub": sub} if sub else {}))
        resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
        assert resp.status == 402, await resp.text()
        assert (await resp.json())["scope"] == "key"
    assert len(upstream.requests) == 1


async def test_tokens_minted_by_a_key_share_its_rate_limit(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    client, _, creds = await make_gateway(
        projects={"alpha": {"rate_limits": {"per_key": {"requests_per_minute": 1}}}}
    )
    token = await _mint(client, creds.key)
    assert (
        await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    ).status == 200
    again = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(creds.key))
    assert again.status == 429


async def test_a_revoked_key_revokes_the_tokens_it_minted(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client, _, creds = gateway
    token = await _mint(client, creds.key, sub="user-1")
    assert (
        await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    ).status == 200
    revoke_on_disk(creds)
    assert reload_config(client.app) is True
    resp = await client.post(chat_url("alpha"), json=chat_body(), headers=bearer(token))
    await assert_unauthorized(resp, creds)
    assert (await auth_failures(client)).get("revoked") == 1


async def test_a_credential_that_is_not_ascii_is_a_401(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """Header bytes that are not UTF-8 (kept as surrogates) failed deep in the JWT
    library or the key digest: a 500. They are a malformed credential."""
    client, _, _ = gateway
    body = json.dumps(chat_body()).encode()
    for token in (b"\xff\xfe.abc.def", b"kt_live_\xff\xfe" + b"a" * 40):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            b"POST /v1/projects/alpha/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + token + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert (await auth_failures(client)).get("malformed") == 2
    assert upstream.requests == []


async def test_head_of_the_usage_report_needs_read_scope_only(gateway: Gateway) -> None:
    client, _, creds = gateway
    url = "/v1/projects/alpha/usage"
    assert (await client.get(url, headers=bearer(creds.read_key))).status == 200
    assert (await client.head(url, headers=bearer(creds.read_key))).status == 200


async def test_failed_logins_on_the_admin_reload_are_counted(gateway: Gateway) -> None:
    client, _, _ = gateway
    for header in ("Bearer kt_live_nope", "Basic abc", ""):
        resp = await client.post("/admin/reload", headers={"Authorization": header})
        assert resp.status == 401
    failures = await auth_failures(client)
    assert sum(failures.values()) == 3, failures
