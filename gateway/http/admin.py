"""``POST /admin/reload``: the operator's reload of the config, over HTTP (SIGHUP
does the same). Only the operator token opens it; only the operator sees a rejected
config's problems (they name every org's files)."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from gateway.config import ConfigError
from gateway.context import STATE
from gateway.control.runtime import CONTROL, ControlPlane
from gateway.errors import Forbidden, Unauthorized, json_error
from gateway.http.middleware.auth import resolve
from gateway.serve.lifecycle import load_reloadable, reload_everywhere

log = logging.getLogger("gateway.admin")


# The operator's credential for gateway-wide operations (POST /admin/reload): a secret
# of its own, from the environment, never an org's key (an org admin would reload every
# org's config and read every org's config errors).
OPERATOR_TOKEN_ENV = "KARTA_OPERATOR_TOKEN"


def _control(request: web.Request) -> ControlPlane | None:
    return request.app.get(CONTROL)


async def _check_operator(request: web.Request) -> None:
    """Let the operator through; anyone else gets 401 (no valid credential) or 403 (an
    org's credential, or the endpoint disabled because no operator token is set)."""
    state = request.app[STATE]
    token = state.config.secret(OPERATOR_TOKEN_ENV)
    if not token:
        raise Forbidden.detail(
            f"POST /admin/reload is disabled: set {OPERATOR_TOKEN_ENV} to enable it, "
            "or reload with SIGHUP"
        )
    header = request.headers.get("Authorization", "")
    sent = header.encode("utf-8", "surrogateescape")
    if hmac.compare_digest(sent, f"Bearer {token}".encode()):  # constant time
        return
    try:
        # Any valid credential but the operator's is a 403, an API-managed key's too.
        await resolve(header or None, state.config, _control(request))
    except Unauthorized as exc:
        state.metrics.auth_failures.labels(exc.reason).inc()  # counted as on every route
        raise
    state.metrics.auth_failures.labels("not_operator").inc()
    raise Forbidden.detail(
        f"reloading the gateway needs the operator token ({OPERATOR_TOKEN_ENV}); "
        "an org's API key or session token cannot"
    )


async def admin_reload(request: web.Request) -> web.Response:
    """``POST /admin/reload`` (the operator token): re-read the config. Only the
    operator sees what is wrong with a rejected config (every org's files)."""
    await _check_operator(request)
    state = request.app[STATE]
    try:
        new = load_reloadable(state.config)
    except ConfigError as exc:
        log.error(
            "config reload rejected, keeping the previous config", extra={"problems": str(exc)}
        )
        problems = [{"file": f, "path": p, "reason": r} for f, p, r in exc.problems]
        return json_error(422, {"error": "config_invalid", "problems": problems})
    if reload_everywhere(request.app, new):  # every worker of several, by the supervisor
        return web.json_response(
            {"reloaded": True, "projects": len(new.projects), "workers": "all"}
        )
    return web.json_response({"reloaded": True, "projects": len(new.projects)})
