"""Auth: who is calling (API key or session token), then which project they may use.

Authenticates before the project is looked up, so unauthenticated callers cannot
probe which projects exist; a project of another org is 404 (default deny).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config import Config
from gateway.context import PRINCIPAL, PROJECT, REQUEST_STATE, Principal
from gateway.credentials import TokenInvalid, match_key, verify_session_token
from gateway.errors import Forbidden, NotFound, Unauthorized
from gateway.metrics import Metrics

# Scope a route needs, by HTTP method: calling a model spends budget, so it needs "write".
REQUIRED_SCOPE = {"POST": "write", "GET": "read", "HEAD": "read"}


def within(token_scopes: frozenset[str], key_scopes: frozenset[str]) -> frozenset[str]:
    """A minted token's scopes as far as its key's current ones allow (a key with
    ``admin`` may do everything, so its tokens keep theirs)."""
    return token_scopes if "admin" in key_scopes else token_scopes & key_scopes


def authenticate(header: str | None, config: Config) -> Principal:
    """Resolve the Authorization header to a principal or raise Unauthorized(reason)."""
    if not header:
        raise Unauthorized("missing")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    # Keys and tokens are ASCII; other bytes (undecodable, kept as surrogates) would fail
    # deeper down, in the digest or the JWT library, as a 500.
    if scheme.lower() != "bearer" or not token or not token.isascii():
        raise Unauthorized("malformed")
    if token.startswith("kt_"):
        record = match_key(token, config.keys_by_prefix)
        if record is None:
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
    if minted_by is None or minted_by.org != claims.org_id:
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
    try:
        principal = authenticate(_credential(request), config)
    except Unauthorized as exc:
        raise _fail(state.metrics, exc) from None
    request[PRINCIPAL] = principal

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
