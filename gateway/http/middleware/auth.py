"""Auth: who is calling (API key or session token), then which project they may use.

Authenticates before the project is looked up, so unauthenticated callers cannot
probe which projects exist; a project of another org is 404 (default deny).

Keys of the config files are matched in memory, as before; a key they do not know (or
a session token minted by one) is looked up among the API-managed keys
(gateway.control): one cached lookup, a Redis read at most once a second per key and
process, a 503 (not a 401) when Redis does not answer and the key is not cached. Both
paths cost about the same (7 to 10 us, a key's SHA-256 included, on the bench machine).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config import Config
from gateway.context import PRINCIPAL, PROJECT, REQUEST_STATE, Principal
from gateway.control.cache import ApiKeyCache
from gateway.control.records import ApiKey, prefix_for
from gateway.control.runtime import CONTROL, ControlPlane
from gateway.control.store import KeyStoreUnavailable
from gateway.credentials import (
    PUBLIC_PREFIX_LEN,
    SessionClaims,
    TokenInvalid,
    key_digest,
    looks_like_key,
    match_key,
    verify_session_token,
)
from gateway.errors import Forbidden, NotFound, ServiceUnavailable, Unauthorized
from gateway.metrics import Metrics

# Scope a route needs, by HTTP method: calling a model spends budget, so it needs "write".
REQUIRED_SCOPE = {"POST": "write", "GET": "read", "HEAD": "read"}


def within(token_scopes: frozenset[str], key_scopes: frozenset[str]) -> frozenset[str]:
    """A minted token's scopes as far as its key's current ones allow (a key with
    ``admin`` may do everything, so its tokens keep theirs)."""
    return token_scopes if "admin" in key_scopes else token_scopes & key_scopes


@dataclass(frozen=True, slots=True)
class Managed:
    """A well-formed key the config files do not have (``token``), or a session token
    minted by a key they do not have (``claims``): an API-managed key's, perhaps. A value,
    not an exception: raising one cost that path half its time."""

    token: str | None = None
    claims: SessionClaims | None = None


def authenticate(header: str | None, config: Config) -> Principal:
    """Resolve the Authorization header to a principal or raise Unauthorized(reason),
    from the config files alone (``resolve`` also knows the API-managed keys)."""
    found = identify(header, config)
    if isinstance(found, Managed):
        raise Unauthorized("unknown_key")
    return found


def identify(header: str | None, config: Config) -> Principal | Managed:
    """The principal of a credential of the config files, or what to look up among the
    API-managed keys; Unauthorized(reason) if neither."""
    if not header:
        raise Unauthorized("missing")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    # Keys and tokens are ASCII; other bytes (undecodable, kept as surrogates) would fail
    # deeper down, in the digest or the JWT library, as a 500.
    if scheme.lower() != "bearer" or not token or not token.isascii():
        raise Unauthorized("malformed")
    if token.startswith("kt_"):
        # A prefix no file has: not hashed here (the API-managed keys' lookup hashes it).
        record = (
            match_key(token, config.keys_by_prefix)
            if token[:PUBLIC_PREFIX_LEN] in config.keys_by_prefix
            else None
        )
        if record is None:
            if looks_like_key(token):
                return Managed(token=token)
            raise Unauthorized("unknown_key")
        if record.entry.revoked:
            raise Unauthorized("revoked")
        return Principal(
            org=record.org,
            scopes=frozenset(record.entry.scopes),
            key_id=record.entry.id,
            key_prefix=record.entry.prefix,
        )
    sessions = config.gateway.session_tokens
    try:
        claims = verify_session_token(
            token, config.secret(sessions.secret_env), sessions.algorithms, sessions.leeway_seconds
        )
    except TokenInvalid as exc:
        raise Unauthorized(exc.reason) from exc
    if claims.key_id is None:  # minted by the operator (gateway token mint)
        return Principal(org=claims.org_id, scopes=claims.scopes, session=claims)
    # Minted by an API key: that key's caps and rate limits apply to it too (or minting
    # tokens would bypass them), it stops working when the key is revoked or removed,
    # and it can do no more than the key can now (a key lowered from write to read by a
    # reload stops its tokens spending at once, not at their expiry).
    minted_by = config.key(claims.key_id)
    if minted_by is None:
        return Managed(claims=claims)
    if minted_by.org != claims.org_id:
        raise Unauthorized("unknown_key")
    if minted_by.entry.revoked:
        raise Unauthorized("revoked")
    return Principal(
        org=claims.org_id,
        scopes=within(claims.scopes, frozenset(minted_by.entry.scopes)),
        key_id=minted_by.entry.id,
        key_prefix=minted_by.entry.prefix,
        session=claims,
    )


async def resolve(header: str | None, config: Config, control: ControlPlane | None) -> Principal:
    """The principal of a credential: of the config files, else an API-managed key's."""
    found = identify(header, config)
    if isinstance(found, Principal):
        return found
    if control is None:
        raise Unauthorized("unknown_key")
    return await managed_principal(found, control.cache)


async def managed_principal(found: Managed, cache: ApiKeyCache) -> Principal:
    """The principal of an API-managed key (``found.token``), or of a session token it
    minted (``found.claims``): the same rules as for a key of the config files."""
    if found.token is not None:
        token = found.token
        key = await _managed(cache, token[:PUBLIC_PREFIX_LEN])
        if key is None or not hmac.compare_digest(key_digest(token).encode(), key.sha256.encode()):
            raise Unauthorized("unknown_key")
        _live(key)
        return Principal(org=key.org, scopes=key.scopes, key_id=key.id, key_prefix=key.prefix)
    claims = found.claims
    if claims is None or claims.key_id is None:
        raise Unauthorized("unknown_key")
    prefix = prefix_for(claims.key_id)
    key = None if prefix is None else await _managed(cache, prefix)
    if key is None or key.id != claims.key_id or key.org != claims.org_id:
        raise Unauthorized("unknown_key")
    _live(key)
    return Principal(
        org=claims.org_id,
        scopes=within(claims.scopes, key.scopes),
        key_id=key.id,
        key_prefix=key.prefix,
        session=claims,
    )


async def _managed(cache: ApiKeyCache, prefix: str) -> ApiKey | None:
    try:
        return await cache.get(prefix)
    except KeyStoreUnavailable:
        # Not a 401: the key may well be valid, and a client must retry, not give up.
        raise ServiceUnavailable.detail(
            "the API key store did not answer; retry", {"Retry-After": "1"}
        ) from None


def _live(key: ApiKey) -> None:
    if key.revoked_at is not None:
        raise Unauthorized("revoked")
    if key.expires_at is not None and time.time() >= key.expires_at:
        raise Unauthorized("expired")  # a rotated key's grace period over, too


def _fail(metrics: Metrics, exc: Unauthorized) -> Unauthorized:
    metrics.auth_failures.labels(exc.reason).inc()
    return exc


def _credential(request: web.Request) -> str | None:
    """The Authorization header, or (the Anthropic SDK's and Claude Code's default) an
    ``x-api-key`` header, as a bearer credential."""
    header = request.headers.get("Authorization")
    if header is None:
        key = request.headers.get("x-api-key")
        if key is not None:
            return f"Bearer {key}"
    return header


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:
        return await handler(request)  # no such route or method: 404/405, nothing to check
    state = request[REQUEST_STATE]
    config = state.config
    control = request.app.get(CONTROL)
    try:
        # The config files' keys first, without an await: the hot path stays as it was.
        found = identify(_credential(request), config)
        if isinstance(found, Principal):
            principal = found
        elif control is None:
            raise Unauthorized("unknown_key")
        else:
            principal = await managed_principal(found, control.cache)
    except Unauthorized as exc:
        raise _fail(state.metrics, exc) from None
    request[PRINCIPAL] = principal
    if control is not None and principal.key_id is not None:
        control.last_used.touch(principal.key_id)

    project = config.project(request.match_info.get("project_ref", ""))
    if project is None or project.org != principal.org:
        raise NotFound.detail("project not found")
    if principal.session is not None and principal.session.project_id != project.id:
        state.metrics.auth_failures.labels("wrong_project").inc()
        raise Forbidden.detail("this session token is valid for another project")
    needed = REQUIRED_SCOPE.get(request.method, "admin")
    if needed not in principal.scopes and "admin" not in principal.scopes:
        state.metrics.auth_failures.labels("insufficient_scope").inc()
        raise Forbidden.detail(f"this credential lacks the {needed!r} scope")
    request[PROJECT] = project
    return await handler(request)
