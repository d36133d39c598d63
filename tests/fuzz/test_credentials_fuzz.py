"""Fuzz: any Authorization header, any key-shaped string and any session token,
validly signed ones with claims of every type included, end in a principal or in
Unauthorized / TokenInvalid with a reason (a 401), never in another exception."""

from __future__ import annotations

import time
from typing import Any

import jwt
from hypothesis import given
from hypothesis import strategies as st

from gateway.credentials import TokenInvalid, looks_like_key, match_key, verify_session_token
from tests.support.strategies import json_values, shaped

SECRET = "fuzz-session-secret-" + "0123456789abcdef" * 3  # 48+ bytes: fine for HS384


@given(st.text(max_size=80))
def test_any_key_shaped_string_matches_nothing_or_a_key(token: str) -> None:
    looks_like_key(token)
    assert match_key(token, {}) is None


claims_like = shaped(
    {
        "org_id": st.text(max_size=6),
        "project_id": st.text(max_size=6),
        "project_slug": st.text(max_size=6),
        "scope": st.sampled_from(["read", "write", "read write"]),
        "exp": st.integers(int(time.time()) + 60, int(time.time()) + 3600),
        "iat": st.integers(0, int(time.time())),
        "nbf": st.integers(0, int(time.time())),
        "sub": st.text(max_size=8),
        "aud": st.text(max_size=4),
    }
)


@given(claims_like, st.sampled_from(["HS256", "HS384"]))
def test_any_signed_claims_verify_or_are_refused_with_a_reason(
    claims: dict[str, Any], algorithm: str
) -> None:
    token = jwt.encode(claims, SECRET, algorithm=algorithm)
    reason = ""
    try:
        verified = verify_session_token(token, SECRET, ("HS256",))
    except TokenInvalid as exc:
        reason = exc.reason or "(none)"
    if reason:
        assert reason != "(none)"
        return
    assert algorithm == "HS256"  # HS384 is not among the accepted algorithms
    assert verified.org_id == claims["org_id"]
    assert isinstance(verified.scopes, frozenset)


@given(st.text(max_size=120) | json_values.map(str))
def test_any_token_text_is_refused_with_a_reason(token: str) -> None:
    reason = ""
    try:
        verify_session_token(token, SECRET, ("HS256",))
    except TokenInvalid as exc:
        reason = exc.reason or "(none)"
    assert reason
    assert reason != "(none)"  # no text signed with our secret is here: always refused
