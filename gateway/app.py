"""The aiohttp application: middleware chain and routes.

    root:  errors -> observe -> /healthz /readyz /admin/reload
    /v1:   auth -> in-flight caps -> parse+validate -> budget -> chat_completions

``/metrics`` is not here: it has its own listener (gateway.metrics_server).

The root app's middlewares wrap the ``/v1`` sub-app's, so every answer, errors
included, is rendered as JSON and observed.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from gateway.budget import BudgetStore
from gateway.config import Config, ConfigError
from gateway.context import STATE, GatewayState
from gateway.errors import (
    ENDPOINTS,
    MAX_BODY_BYTES,
    Forbidden,
    Unauthorized,
    endpoint_list,
    error_middleware,
    json_error,
)
from gateway.metrics import Metrics
from gateway.metrics_server import metrics_listener
from gateway.middleware.auth import auth_middleware, authenticate
from gateway.middleware.inflight import inflight_middleware
from gateway.middleware.observe import add_request_id, observe_middleware
from gateway.proxy import chat_completions
from gateway.serve.lifecycle import load_reloadable, reload_everywhere
from gateway.serve.resources import redis_client, resources
from gateway.sessions import mint_token
from gateway.usage_report import get_usage

log = logging.getLogger("gateway.app")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store_ok = await state.store.ping()
    if state.ready and store_ok:
        return web.json_response({"status": "ready"})
    checks = {"budget_store": "ok" if store_ok else "unreachable", "accepting": state.ready}
    return json_error(503, {"detail": "not ready", "checks": checks}, {"Retry-After": "1"})


# The operator's credential for gateway-wide operations (POST /admin/reload): a secret
# of its own, from the environment, never an org's key (an org admin would reload every
# org's config and read every org's config errors).
OPERATOR_TOKEN_ENV = "KARTA_OPERATOR_TOKEN"


def _check_operator(request: web.Request) -> None:
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
        authenticate(header or None, state.config)
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
    _check_operator(request)
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


def create_app(
    config: Config,
    redis_url: str,
    metrics: Metrics | None = None,
    metrics_address: tuple[str, int] | None = None,
) -> web.Application:
    """The gateway application, using the Redis at ``redis_url``. With a
    ``metrics_address`` it also opens the metrics listener there while it runs: one
    process of a gateway does (the others' values reach it through the multiprocess
    files)."""
    gw = config.gateway
    app = web.Application(
        middlewares=[error_middleware, observe_middleware],
        client_max_size=gw.limits.max_body_bytes,
    )
    timeout_s = gw.redis.timeout_ms / 1000
    redis = redis_client(redis_url, timeout_s)
    store = BudgetStore(redis, gw.redis.key_prefix, timeout_s, gw.limits.reservation_ttl_seconds)
    state = GatewayState(config=config, store=store, providers={}, metrics=metrics or Metrics())
    app[STATE] = state

    app.cleanup_ctx.append(resources(state, redis))
    if metrics_address is not None:
        token = config.secret(gw.metrics.bearer_token_env)
        app.cleanup_ctx.append(metrics_listener(metrics_address, token))  # after the store
    app.on_response_prepare.append(add_request_id)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/admin/reload", admin_reload)

    v1 = web.Application(middlewares=[auth_middleware, inflight_middleware])
    v1.router.add_post(
        "/projects/{project_ref}/chat/completions", chat_completions, name="chat_completions"
    )
    v1.router.add_post("/projects/{project_ref}/session-tokens", mint_token)
    v1.router.add_get("/projects/{project_ref}/usage", get_usage)
    app.add_subapp("/v1/", v1)
    app[ENDPOINTS] = endpoint_list(app)
    app[MAX_BODY_BYTES] = gw.limits.max_body_bytes
    return app
