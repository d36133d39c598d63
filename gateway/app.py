"""The aiohttp application: middleware chain, routes, long-lived resources.

    root:  errors -> observe -> /healthz /readyz /admin/reload
    /v1:   auth -> in-flight caps -> parse+validate -> budget -> chat_completions

``/metrics`` is not here: it has its own listener (gateway.metrics_server).

The root app's middlewares wrap the ``/v1`` sub-app's, so every answer, errors
included, is rendered as JSON and observed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.budget import BudgetStore, RedisLike
from gateway.config import Config, ConfigError, load_config
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
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.demo import DemoProvider
from gateway.providers.openai import OpenAIProvider
from gateway.proxy import chat_completions
from gateway.sessions import mint_token
from gateway.surfaces.models import get_model, list_models, list_models_anthropic
from gateway.usage_report import get_usage

log = logging.getLogger("gateway.app")
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)


def build_providers(config: Config, session: aiohttp.ClientSession) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, spec in config.gateway.providers.items():
        if spec.kind == "demo":
            providers[name] = DemoProvider(name, spec)
        elif spec.kind == "anthropic":
            providers[name] = AnthropicProvider(name, spec, session)
        else:
            providers[name] = OpenAIProvider(name, spec, session)
    return providers


REDIS_MAX_CONNECTIONS = 512  # per process; a busy pool makes callers wait, not fail


def redis_client(url: str, timeout_s: float) -> RedisLike:
    """A Redis client with tight timeouts and no hidden retries.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) selects Redis Cluster: the
    node given is a seed; every budget script touches one slot (one project's hash tag).
    The pool blocks (up to the timeout) when every connection is busy, so a burst
    waits for a connection instead of failing with 503.
    """
    if "+cluster://" in url.split("?", 1)[0]:
        return RedisCluster.from_url(
            url.replace("+cluster://", "://", 1),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=REDIS_MAX_CONNECTIONS,
        )
    # socket_timeout=None (redis-py 8 defaults to 5 s): every call is already bounded by
    # asyncio.timeout in the store (and the auto-pipeline's reply timeout), while a socket
    # timeout runs each command under wait_for, which costs a task per command and, on
    # Python 3.11, can swallow a cancellation.
    pool = BlockingConnectionPool.from_url(
        url,
        socket_timeout=None,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return Redis.from_pool(pool)  # the client owns (and closes) its pool


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store_ok = await state.store.ping()
    if state.ready and store_ok:
        return web.json_response({"status": "ready"})
    checks = {"budget_store": "ok" if store_ok else "unreachable", "accepting": state.ready}
    return json_error(503, {"detail": "not ready", "checks": checks}, {"Retry-After": "1"})


def reload_config(app: web.Application) -> bool:
    """Re-read the config directory; keep serving the old one if the new one is invalid.

    In-flight requests keep the project objects they resolved, so they are unaffected.
    """
    state = app[STATE]
    try:
        new = _load_reloadable(state.config)
    except ConfigError as exc:
        log.error(
            "config reload rejected, keeping the previous config", extra={"problems": str(exc)}
        )
        return False
    _swap(app, new)
    return True


def _load_reloadable(current: Config) -> Config:
    """The config directory as it is now, if valid and applicable without a restart
    (else ConfigError): where budgets live (the Redis and its key prefix) cannot change
    under running requests, nor can the listener or the body limit a running server
    was built with."""
    new = load_config(current.directory, current.env)
    old, gw = current.gateway, new.gateway
    restart_only = {
        "redis.url": (old.redis.url, gw.redis.url),
        "redis.key_prefix": (old.redis.key_prefix, gw.redis.key_prefix),
        "listen": (old.listen, gw.listen),
        "metrics": (old.metrics, gw.metrics),
        "limits.max_body_bytes": (old.limits.max_body_bytes, gw.limits.max_body_bytes),
    }
    path = str(current.directory / "gateway.yaml")
    problems = [
        (path, name, "changes only on a restart; the running gateway keeps its value")
        for name, (before, after) in restart_only.items()
        if before != after
    ]
    if problems:
        raise ConfigError(problems)
    return new


def begin_shutdown(app: web.Application, drain_seconds: float, grace_seconds: float) -> None:
    """SIGTERM: /readyz fails at once; after ``drain_seconds`` the server stops accepting
    and open requests get ``grace_seconds`` to finish; streams still open then end with
    an error event, unary calls still waiting on their provider with a 503; every reservation is settled before the process exits (aiohttp's
    own shutdown timeout must be longer than the grace period)."""
    state = app[STATE]
    if not state.ready:
        return
    state.ready = False
    log.info(
        "shutting down", extra={"drain_seconds": drain_seconds, "grace_seconds": grace_seconds}
    )
    loop = asyncio.get_running_loop()

    def stop() -> None:
        raise web.GracefulExit()

    def cut_handlers() -> None:
        state.grace_over = True
        for task in list(state.handlers):
            task.cancel()  # a stream writes the gateway_shutdown error event; a unary 503

    loop.call_later(drain_seconds, stop)
    loop.call_later(drain_seconds + grace_seconds, cut_handlers)


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
        new = _load_reloadable(state.config)
    except ConfigError as exc:
        log.error(
            "config reload rejected, keeping the previous config", extra={"problems": str(exc)}
        )
        problems = [{"file": f, "path": p, "reason": r} for f, p, r in exc.problems]
        return json_error(422, {"error": "config_invalid", "problems": problems})
    from gateway.cli import SUPERVISOR_PID_ENV  # here: the CLI module imports this one

    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor and supervisor == str(os.getppid()):
        # One of several workers: the supervisor sends every worker (this one too) the
        # SIGHUP that reloads it. A reload of this worker alone would leave the others
        # on the old config (a revoked key still working there).
        os.kill(int(supervisor), signal.SIGHUP)
        return web.json_response(
            {"reloaded": True, "projects": len(new.projects), "workers": "all"}
        )
    _swap(request.app, new)
    return web.json_response({"reloaded": True, "projects": len(new.projects)})


def _swap(app: web.Application, new: Config) -> None:
    state = app[STATE]
    state.providers = build_providers(new, app[HTTP_SESSION])
    # The reservation ttl follows the providers' timeouts (checked together at load):
    # keeping the old one with longer new timeouts would let holds expire mid-request.
    state.store.timeout_s = new.gateway.redis.timeout_ms / 1000
    state.store.reservation_ttl_s = new.gateway.limits.reservation_ttl_seconds
    state.config = new
    log.info("config reloaded", extra={"projects": len(new.projects)})


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

    async def resources(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
        # No cookie jar: one session serves every project, so a cookie a provider sets
        # (load balancers do) must not ride along on other projects' calls.
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
        )
        app[HTTP_SESSION] = session
        state.providers = build_providers(state.config, session)
        await state.store.prepare()
        yield
        state.ready = False
        if state.background:  # pending settle retries finish before the store closes
            await asyncio.wait(state.background, timeout=10)
        # Still retrying (the store is down): stop them; each logs what it could not record.
        for task in list(state.background):
            task.cancel()
        await asyncio.gather(*state.background, return_exceptions=True)
        await session.close()
        await redis.aclose()

    app.cleanup_ctx.append(resources)
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
    v1.router.add_get("/projects/{project_ref}/models", list_models)
    v1.router.add_get("/projects/{project_ref}/models/{model}", get_model)
    v1.router.add_get("/projects/{project_ref}/v1/models", list_models_anthropic)
    app.add_subapp("/v1/", v1)
    app[ENDPOINTS] = endpoint_list(app)
    app[MAX_BODY_BYTES] = gw.limits.max_body_bytes
    return app
