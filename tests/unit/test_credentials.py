"""Unit tests for gateway.credentials: API keys and session tokens (pure, no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import jwt
import pytest

from gateway.config import ApiKeyEntry, KeyRecord
from gateway.credentials import (
    KEY_PREFIX,
    PUBLIC_PREFIX_LEN,
    SessionClaims,
    TokenInvalid,
    generate_key,
    key_digest,
    looks_like_key,
    match_key,
    mint_session_token,
    verify_session_token,
)

SECRET = "unit-test-session-secret-" + "s" * 48  # >= 64 bytes: fine for HS512 too
HS256 = ("HS256",)
CLAIMS = {"org_id": "acme", "project_id": "prj_alpha", "project_slug": "alpha", "scope": "write"}


# --------------------------------------------------------------------------- API keys


def test_generate_key_format() -> None:
    key = generate_key()
    assert re.fullmatch(r"kt_live_[0-9A-Za-z]{32}", key.secret)
    assert len(key.secret) == 40
    assert PUBLIC_PREFIX_LEN == 16
    assert key.prefix == key.secret[:16]
    assert key.prefix.startswith(KEY_PREFIX)
    assert key.sha256 == hashlib.sha256(key.secret.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", key.sha256)
    assert key_digest(key.secret) == key.sha256
    # The entry `gateway keys new` writes is accepted by the config schema.
    entry = ApiKeyEntry(id="k", prefix=key.prefix, sha256=key.sha256)
    assert entry.prefix == key.prefix


def test_generate_key_is_random() -> None:
    secrets = {generate_key().secret for _ in range(200)}
    assert len(secrets) == 200
    # All of base62 shows up across 200 * 32 random characters.
    alphabet = set("".join(s[len(KEY_PREFIX) :] for s in secrets))
    assert alphabet == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _record(secret: str, org: str = "acme", key_id: str = "k1", **kw: Any) -> KeyRecord:
    return KeyRecord(
        org, ApiKeyEntry(id=key_id, prefix=secret[:16], sha256=key_digest(secret), **kw)
    )


def _index(*records: KeyRecord) -> dict[str, tuple[KeyRecord, ...]]:
    out: dict[str, list[KeyRecord]] = {}
    for r in records:
        out.setdefault(r.entry.prefix, []).append(r)
    return {k: tuple(v) for k, v in out.items()}


def test_match_key_finds_the_right_record() -> None:
    a, b = generate_key(), generate_key()
    ra, rb = _record(a.secret, "acme", "ka"), _record(b.secret, "globex", "kb")
    index = _index(ra, rb)
    assert match_key(a.secret, index) is ra
    assert match_key(b.secret, index) is rb


def test_match_key_with_shared_prefix_picks_by_digest() -> None:
    head = "kt_live_SAMEpref"
    one, two = head + "A" * 24, head + "B" * 24
    r1, r2 = _record(one, key_id="one"), _record(two, key_id="two")
    index = _index(r1, r2)
    assert len(index[head]) == 2
    assert match_key(one, index) is r1
    assert match_key(two, index) is r2


def test_match_key_rejects_wrong_key_with_same_prefix() -> None:
    key = generate_key()
    index = _index(_record(key.secret))
    last = key.secret[-1]
    forged = key.secret[:-1] + ("a" if last != "a" else "b")
    assert forged[:16] == key.prefix
    assert looks_like_key(forged)
    assert match_key(forged, index) is None
    forged_tail = key.prefix + "0" * 24
    assert match_key(forged_tail, index) is None


def test_match_key_unknown_prefix() -> None:
    index = _index(_record(generate_key().secret))
    assert match_key(generate_key().secret, index) is None
    assert match_key(generate_key().secret, {}) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "kt_live_",
        "kt_live_short",
        "kt_test_" + "a" * 32,
        "KT_LIVE_" + "a" * 32,
        "sk-" + "a" * 32,
        "a" * 40,
    ],
)
def test_match_key_rejects_malformed_tokens(token: str) -> None:
    assert not looks_like_key(token)
    assert match_key(token, {}) is None


def test_match_key_rejects_malformed_variants_of_a_real_key() -> None:
    key = generate_key()
    index = _index(_record(key.secret))
    for token in (
        key.secret + "x",  # too long
        key.secret[:-1],  # too short
        key.secret[:-1] + "-",  # not base62
        key.secret[:-1] + "_",
        key.secret[:-1] + "é",
        key.secret + "\n",
        " " + key.secret,
    ):
        assert not looks_like_key(token), token
        assert match_key(token, index) is None, token


def test_match_key_returns_revoked_records_for_the_caller_to_refuse() -> None:
    key = generate_key()
    record = _record(key.secret, revoked=True)
    assert match_key(key.secret, _index(record)) is record


# --------------------------------------------------------------------------- session tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_built(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _payload(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {**CLAIMS, "iat": now, "nbf": now, "exp": now + 600}
    payload.update(over)
    return {k: v for k, v in payload.items() if v is not _DROP}


_DROP = object()


def _reason(token: str, secret: str = SECRET, algorithms: tuple[str, ...] = HS256) -> str:
    with pytest.raises(TokenInvalid) as info:
        verify_session_token(token, secret, algorithms)
    assert str(info.value) == info.value.reason
    return info.value.reason


def test_mint_verify_round_trip() -> None:
    now = time.time()
    token = mint_session_token(
        SECRET,
        org_id="acme",
        project_id="prj_alpha",
        project_slug="alpha",
        scope="read write",
        ttl_seconds=300,
        sub="user-42",
        now=now,
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["iat"] == raw["nbf"] == int(now)
    assert raw["exp"] == int(now) + 300
    claims = verify_session_token(token, SECRET, HS256)
    assert claims == SessionClaims(
        org_id="acme",
        project_id="prj_alpha",
        project_slug="alpha",
        scopes=frozenset({"read", "write"}),
        exp=int(now) + 300,
        sub="user-42",
    )


def test_mint_without_sub() -> None:
    token = mint_session_token(SECRET, org_id="o", project_id="p", project_slug="s")
    assert "sub" not in jwt.decode(token, options={"verify_signature": False})
    claims = verify_session_token(token, SECRET, HS256)
    assert claims.sub is None
    assert claims.scopes == frozenset({"write"})


def test_mint_requires_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        mint_session_token("", org_id="o", project_id="p", project_slug="s")


def test_verify_without_configured_secret_fails() -> None:
    token = mint_session_token(SECRET, org_id="o", project_id="p", project_slug="s")
    assert _reason(token, secret="") == "session tokens are not enabled"


def test_expired_beyond_leeway() -> None:
    # Expired 100 s ago, far beyond the 5 s leeway.
    token = mint_session_token(SECRET, **_kw(), ttl_seconds=900, now=time.time() - 1000)
    assert _reason(token) == "expired"


def test_expired_within_leeway_is_accepted() -> None:
    token = mint_session_token(SECRET, **_kw(), ttl_seconds=900, now=time.time() - 902)
    assert verify_session_token(token, SECRET, HS256, leeway=5).project_id == "prj_alpha"
    assert _reason_leeway(token, leeway=0) == "expired"


def _reason_leeway(token: str, leeway: int) -> str:
    with pytest.raises(TokenInvalid) as info:
        verify_session_token(token, SECRET, HS256, leeway=leeway)
    return info.value.reason


def _kw() -> dict[str, Any]:
    return {"org_id": "acme", "project_id": "prj_alpha", "project_slug": "alpha"}


def test_wrong_signature() -> None:
    token = mint_session_token("another-secret-" + "y" * 24, **_kw())
    assert _reason(token) == "bad_signature"


def test_tampered_payload_fails_signature() -> None:
    token = mint_session_token(SECRET, **_kw())
    head, _, sig = token.split(".")
    forged_payload = _b64(json.dumps(_payload(project_id="prj_beta")).encode())
    assert _reason(f"{head}.{forged_payload}.{sig}") == "bad_signature"


def test_alg_none_is_refused() -> None:
    token = _hand_built({"alg": "none", "typ": "JWT"}, _payload())
    assert token.endswith(".")
    assert _reason(token) == "bad_algorithm"


def test_alg_none_is_refused_even_if_config_lists_it() -> None:
    token = _hand_built({"alg": "none", "typ": "JWT"}, _payload())
    with pytest.raises(TokenInvalid):
        verify_session_token(token, SECRET, ("HS256", "none"))


def test_hs512_refused_when_only_hs256_allowed() -> None:
    token = mint_session_token(SECRET, **_kw(), algorithm="HS512")
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert _reason(token) == "bad_algorithm"
    # ...and accepted when the config allows it.
    assert verify_session_token(token, SECRET, ("HS256", "HS512")).project_slug == "alpha"


def test_rs256_header_with_hmac_signature_refused() -> None:
    """HS/RS confusion: a token claiming RS256 but signed with the shared secret."""
    header = {"alg": "RS256", "typ": "JWT"}
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(_payload()).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert _reason(f"{head}.{body}.{_b64(sig)}") == "bad_algorithm"


@pytest.mark.parametrize("claim", ["exp", "org_id", "project_id", "project_slug", "scope"])
def test_missing_required_claim(claim: str) -> None:
    token = jwt.encode(_payload(**{claim: _DROP}), SECRET, algorithm="HS256")
    assert claim not in jwt.decode(token, options={"verify_signature": False})
    assert _reason(token) == "missing_claim"


@pytest.mark.parametrize("claim", ["org_id", "project_id", "project_slug", "scope"])
@pytest.mark.parametrize("value", ["", 7, None, ["acme"]])
def test_empty_or_non_string_required_claim(claim: str, value: Any) -> None:
    token = jwt.encode(_payload(**{claim: value}), SECRET, algorithm="HS256")
    assert _reason(token) == "missing_claim"


@pytest.mark.parametrize("sub", [123, ["u"], {"id": "u"}, True])
def test_non_string_sub(sub: Any) -> None:
    token = jwt.encode(_payload(sub=sub), SECRET, algorithm="HS256")
    assert _reason(token) == "malformed"


@pytest.mark.parametrize("sub", ["", "u" * 257])
def test_empty_or_oversized_sub(sub: str) -> None:
    token = jwt.encode(_payload(sub=sub), SECRET, algorithm="HS256")
    assert _reason(token) == "malformed"


def test_not_yet_valid_token() -> None:
    later = int(time.time()) + 600
    token = jwt.encode(_payload(nbf=later, exp=later + 600), SECRET, algorithm="HS256")
    assert _reason(token) == "malformed"


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "kt_live_" + "a" * 32])
def test_garbage_tokens(token: str) -> None:
    assert _reason(token) == "malformed"
