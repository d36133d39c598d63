"""``POST /v1/projects/{ref}/session-tokens``: an API key with ``write`` scope mints a
short-lived session token for one end user of the project."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.context import PRINCIPAL, PROJECT, REQUEST_STATE
from gateway.credentials import mint_session_token
from gateway.errors import Conflict, Forbidden, ServiceUnavailable, ValidationFailed
from gateway.pipeline.request import bounded_json, read_body


async def mint_token(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    if principal.session is not None:
        raise Forbidden.detail("session tokens cannot mint session tokens; use an API key")
    project = request[PROJECT]
    if not project.file.enabled:
        # As for its chat calls: a disabled project gets nothing new, tokens included.
        raise Conflict.detail("project is disabled")
    config = request[REQUEST_STATE].config
    sessions = config.gateway.session_tokens
    secret = config.secret(sessions.secret_env)
    if not secret:
        raise ServiceUnavailable.detail("session tokens are not configured", {"Retry-After": "60"})
    raw = await read_body(request, config.gateway.limits)
    body = bounded_json(raw, config.gateway.limits) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", None)
    sub = body.get("sub")
    if sub is not None and (not isinstance(sub, str) or not 0 < len(sub) <= 256):
        raise ValidationFailed("sub must be a string of 1 to 256 characters", "sub")
    ttl = body.get("ttl_seconds", sessions.default_ttl_seconds)
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int)
        or not 30 <= ttl <= sessions.max_ttl_seconds
    ):
        raise ValidationFailed(
            f"ttl_seconds must be an integer between 30 and {sessions.max_ttl_seconds}",
            "ttl_seconds",
        )
    now = int(time.time())
    token = mint_session_token(
        secret,
        org_id=project.org,
        project_id=project.id,
        project_slug=project.slug,
        scope="write",
        ttl_seconds=ttl,
        sub=sub,
        now=now,
        algorithm=sessions.algorithms[0],
        key_id=principal.key_id,
    )
    return web.json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "project_id": project.id,
            "sub": sub,
            "expires_at": now + ttl,
        },
        status=201,
    )
