"""Credentials, pure: API keys (``kt_live_`` + 32 base62) and HS256 session tokens.

Keys are stored only as a SHA-256 digest plus a short public prefix used for the
lookup; 190 bits of entropy make a slow hash pointless. Session tokens are JWTs
verified offline with the algorithms the config allows, never the token's own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.config import KeyRecord

KEY_PREFIX = "kt_live_"
KEY_RANDOM_LEN = 32
PUBLIC_PREFIX_LEN = len(KEY_PREFIX) + 8
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_SET = frozenset(_BASE62)
REQUIRED_CLAIMS = ("exp", "org_id", "project_id", "project_slug", "scope")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated API key: ``secret`` is shown once and never stored."""

    secret: str
    prefix: str
    sha256: str


def generate_key() -> NewKey:
    secret = KEY_PREFIX + "".join(secrets.choice(_BASE62) for _ in range(KEY_RANDOM_LEN))
    return NewKey(secret, secret[:PUBLIC_PREFIX_LEN], key_digest(secret))


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    rest = token[len(KEY_PREFIX) :]
    return (
        token.startswith(KEY_PREFIX)
        and len(rest) == KEY_RANDOM_LEN
        and all(c in _BASE62_SET for c in rest)
    )


def match_key(token: str, keys_by_prefix: dict[str, tuple[KeyRecord, ...]]) -> KeyRecord | None:
    """The key record whose digest matches ``token`` (constant-time compare), else None.

    Revoked keys are returned too; the caller decides (they must fail at once).
    """
    if not looks_like_key(token):
        return None
    candidates = keys_by_prefix.get(token[:PUBLIC_PREFIX_LEN], ())
    digest = key_digest(token).encode()
    found: KeyRecord | None = None
    for record in candidates:
        if hmac.compare_digest(digest, record.entry.sha256.encode()):
            found = record
    return found


class TokenInvalid(Exception):
    """The session token is malformed, expired, badly signed or lacks a claim."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SessionClaims:
    org_id: str
    project_id: str
    project_slug: str
    scopes: frozenset[str]
    exp: int
    sub: str | None
    key_id: str | None = None  # the API key that minted it (its caps and limits apply)


def mint_session_token(
    secret: str,
    *,
    org_id: str,
    project_id: str,
    project_slug: str,
    scope: str = "write",
    ttl_seconds: int = 900,
    sub: str | None = None,
    now: float | None = None,
    algorithm: str = "HS256",
    key_id: str | None = None,
) -> str:
    if not secret:
        raise ValueError("session-token secret is not set")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "org_id": org_id,
        "project_id": project_id,
        "project_slug": project_slug,
        "scope": scope,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
    }
    if sub is not None:
        claims["sub"] = sub
    if key_id is not None:
        claims["key_id"] = key_id
    return jwt.encode(claims, secret, algorithm=algorithm)


def verify_session_token(
    token: str, secret: str, algorithms: tuple[str, ...], leeway: int = 5
) -> SessionClaims:
    """Verify signature, expiry and required claims; raise TokenInvalid with a reason."""
    if not secret:
        raise TokenInvalid("session tokens are not enabled")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=list(algorithms),
            options={"require": list(REQUIRED_CLAIMS)},
            leeway=leeway,
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise TokenInvalid("bad_signature") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise TokenInvalid("missing_claim") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise TokenInvalid("bad_algorithm") from exc
    except (jwt.PyJWTError, TypeError, ValueError, OverflowError) as exc:
        # TypeError and friends: PyJWT before 2.10 compares an `exp` or `nbf` claim of the
        # wrong type (a string, a list) unchecked; a signed but malformed token is a 401.
        raise TokenInvalid("malformed") from exc
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp != exp:
        raise TokenInvalid("malformed")
    fields = ("org_id", "project_id", "project_slug", "scope")
    if not all(isinstance(claims.get(f), str) and claims[f] for f in fields):
        raise TokenInvalid("missing_claim")
    sub = claims.get("sub")
    if sub is not None and (not isinstance(sub, str) or not sub or len(sub) > 256):
        raise TokenInvalid("malformed")
    key_id = claims.get("key_id")
    if key_id is not None and (not isinstance(key_id, str) or not 0 < len(key_id) <= 128):
        raise TokenInvalid("malformed")
    return SessionClaims(
        org_id=claims["org_id"],
        project_id=claims["project_id"],
        project_slug=claims["project_slug"],
        scopes=frozenset(claims["scope"].split()),
        exp=int(min(exp, 2**53)),
        sub=sub,
        key_id=key_id,
    )
