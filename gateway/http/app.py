"""The aiohttp application and its routes table.

    root:  errors -> observe -> /healthz /readyz /admin/reload /openapi.json
    /v1:   auth -> in-flight caps -> chat_completions (the pipeline: gateway.pipeline)
                                     session-tokens, usage
    /v1/orgs:  control auth -> api-keys (gateway.control)

``/metrics`` is not here: it has its own listener (gateway.http.metrics_listener).

The root app's middlewares wrap the ``/v1`` sub-app's, so every answer, errors
included, is rendered as JSON and observed.
"""

from __future__ import annotations

from aiohttp import web

from gateway.budget import BudgetStore
from gateway.config import Config
from gateway.context import STATE, GatewayState
from gateway.control.routes import control_app
from gateway.control.runtime import CONTROL, control_plane, control_runtime
from gateway.http.admin import admin_reload
from gateway.http.metrics_listener import metrics_listener
from gateway.http.middleware.auth import auth_middleware
from gateway.http.middleware.errors import (
    ENDPOINTS,
    MAX_BODY_BYTES,
    endpoint_list,
    error_middleware,
)
from gateway.http.middleware.inflight import inflight_middleware
from gateway.http.middleware.observe import add_request_id, observe_middleware
from gateway.http.openapi import openapi_json
from gateway.http.probes import healthz, readyz
from gateway.metrics import Metrics
from gateway.pipeline.headroom import add_budget_headers
from gateway.proxy import chat_completions
from gateway.serve.resources import redis_client, resources
from gateway.sessions import mint_token
from gateway.surfaces.embeddings_route import create_embeddings
from gateway.surfaces.messages_route import count_tokens, create_message
from gateway.surfaces.models import get_model, list_models, list_models_anthropic
from gateway.surfaces.responses_route import create_response, get_response
from gateway.usage_report import get_usage


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
    control = control_plane(redis, gw.redis.key_prefix, lambda: state.store.timeout_s)
    app.cleanup_ctx.append(control_runtime(control))  # after resources: ends before them
    if metrics_address is not None:
        token = config.secret(gw.metrics.bearer_token_env)
        app.cleanup_ctx.append(metrics_listener(metrics_address, token))  # after the store
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(add_budget_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/admin/reload", admin_reload)
    # The API's description (gateway.http.openapi): every route added here is in it.
    app.router.add_get("/openapi.json", openapi_json)

    v1 = web.Application(middlewares=[auth_middleware, inflight_middleware])
    v1[CONTROL] = control
    app[CONTROL] = control  # /admin/reload resolves API-managed keys too
    v1.router.add_post(
        "/projects/{project_ref}/chat/completions", chat_completions, name="chat_completions"
    )
    v1.router.add_post("/projects/{project_ref}/session-tokens", mint_token)
    v1.router.add_get("/projects/{project_ref}/usage", get_usage)
    v1.router.add_get("/projects/{project_ref}/models", list_models)
    v1.router.add_get("/projects/{project_ref}/models/{model}", get_model)
    v1.router.add_get(
        "/projects/{project_ref}/v1/models", list_models_anthropic, name="anthropic_models"
    )
    v1.router.add_post("/projects/{project_ref}/embeddings", create_embeddings)
    v1.router.add_post("/projects/{project_ref}/responses", create_response, name="responses")
    v1.router.add_get(
        "/projects/{project_ref}/responses/{response_id}", get_response, name="response"
    )
    v1.router.add_post(
        "/projects/{project_ref}/v1/messages", create_message, name="anthropic_messages"
    )
    v1.router.add_post(
        "/projects/{project_ref}/v1/messages/count_tokens",
        count_tokens,
        name="anthropic_count_tokens",
    )
    app.add_subapp("/v1/orgs/", control_app(control))  # matched first: the longer prefix
    app.add_subapp("/v1/", v1)
    app[ENDPOINTS] = endpoint_list(app)
    app[MAX_BODY_BYTES] = gw.limits.max_body_bytes
    return app
