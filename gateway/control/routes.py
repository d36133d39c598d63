"""``/v1/orgs/{org}/api-keys``: the API keys of an org, managed over HTTP.

    GET  /v1/orgs/{org}/api-keys                   every key (config files' read-only)
    POST /v1/orgs/{org}/api-keys                   create: 201, the plaintext once
    GET  /v1/orgs/{org}/api-keys/{id}              one key
    POST /v1/orgs/{org}/api-keys/{id}/revoke       200: stops everywhere within 1 s
    POST /v1/orgs/{org}/api-keys/{id}/rotate       201: a new key; the old one's grace

Who may call: the operator (``KARTA_OPERATOR_TOKEN``) for any org of the config; an
org's key with the ``admin`` scope for its own org only. Another org is 404 whatever
the credential's scopes (which orgs exist is not told), a key of the org without
``admin`` 403, a session token 403 (it is pinned to a project). POSTs honour
``Idempotency-Key`` (gateway.control.service).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.context import PRINCIPAL, REQUEST_STATE
from gateway.control.runtime import CONTROL, ControlPlane
from gateway.control.service import Actor, Answer, Idem, KeyService, fingerprint
from gateway.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from gateway.http.admin import OPERATOR_TOKEN_ENV
from gateway.http.middleware.auth import resolve
from gateway.pipeline.idempotency import REPLAYED_HEADER, idempotency_key
from gateway.pipeline.request import bounded_json, read_body


@dataclass(frozen=True, slots=True)
class Caller:
    actor: Actor
    operator: bool


CALLER = web.RequestKey("control_caller", Caller)


@web.middleware
async def control_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:
        return await handler(request)  # no such route or method: 404/405, nothing to check
    request[CALLER] = await _caller(request, request.match_info["org"])
    return await handler(request)


async def _caller(request: web.Request, org: str) -> Caller:
    state = request[REQUEST_STATE]
    config = state.config
    header = request.headers.get("Authorization")
    operator_token = config.secret(OPERATOR_TOKEN_ENV)
    if operator_token and header is not None:
        sent = header.encode("utf-8", "surrogateescape")
        if hmac.compare_digest(sent, f"Bearer {operator_token}".encode()):  # constant time
            if org not in config.gateway.orgs:
                raise NotFound.detail("org not found")
            return Caller(Actor("operator"), operator=True)
    try:
        principal = await resolve(header, config, request.app[CONTROL])
    except Unauthorized as exc:
        state.metrics.auth_failures.labels(exc.reason).inc()
        raise
    request[PRINCIPAL] = principal
    if principal.org != org or org not in config.gateway.orgs:
        raise NotFound.detail("org not found")  # another org's keys: not even that it exists
    if principal.session is not None:
        state.metrics.auth_failures.labels("insufficient_scope").inc()
        raise Forbidden.detail(
            "a session token cannot manage API keys: use an API key of the org with the "
            "'admin' scope"
        )
    if "admin" not in principal.scopes:
        state.metrics.auth_failures.labels("insufficient_scope").inc()
        raise Forbidden.detail("managing API keys needs a key with the 'admin' scope")
    request.app[CONTROL].last_used.touch(str(principal.key_id))
    return Caller(Actor(f"key:{principal.key_id}"), operator=False)


def _service(request: web.Request) -> KeyService:
    control: ControlPlane = request.app[CONTROL]
    return KeyService(request[REQUEST_STATE].config, control.store)


async def _body(request: web.Request) -> tuple[bytes, Any]:
    limits = request[REQUEST_STATE].config.gateway.limits
    raw = await read_body(request, limits)
    return raw, bounded_json(raw, limits) if raw.strip() else None


def _idem(request: web.Request, operation: str, target: str, raw: bytes) -> Idem | None:
    key = idempotency_key(request)
    return None if key is None else Idem(key, fingerprint(operation, target, raw))


def _json(status: int, body: Any, replayed: bool = False) -> web.Response:
    # no-store: a created key's plaintext must not stay in a cache on the way.
    headers = {"Cache-Control": "no-store"}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _answer(answer: Answer) -> web.Response:
    return _json(answer.status, answer.body, answer.replayed)


async def list_keys(request: web.Request) -> web.Response:
    data = await _service(request).list_keys(request.match_info["org"])
    return _json(200, {"object": "list", "data": data})


async def get_key(request: web.Request) -> web.Response:
    m = request.match_info
    return _json(200, await _service(request).get(m["org"], m["key_id"]))


async def create_key(request: web.Request) -> web.Response:
    org = request.match_info["org"]
    raw, body = await _body(request)
    idem = _idem(request, "create", org, raw)
    answer = await _service(request).create(org, body, request[CALLER].actor, idem)
    return _answer(answer)


async def revoke_key(request: web.Request) -> web.Response:
    org, key_id = request.match_info["org"], request.match_info["key_id"]
    raw, body = await _body(request)
    if body not in (None, {}):
        raise ValidationFailed("revoke takes no fields: send no body or {}", None)
    idem = _idem(request, "revoke", f"{org}/{key_id}", raw)
    return _answer(await _service(request).revoke(org, key_id, request[CALLER].actor, idem))


async def rotate_key(request: web.Request) -> web.Response:
    org, key_id = request.match_info["org"], request.match_info["key_id"]
    raw, body = await _body(request)
    idem = _idem(request, "rotate", f"{org}/{key_id}", raw)
    answer = await _service(request).rotate(org, key_id, body, request[CALLER].actor, idem)
    return _answer(answer)


def control_app(control: ControlPlane) -> web.Application:
    """The sub-application mounted at ``/v1/orgs/``."""
    app = web.Application(middlewares=[control_auth])
    app[CONTROL] = control
    app.router.add_get("/{org}/api-keys", list_keys, name="api_keys")
    app.router.add_post("/{org}/api-keys", create_key, name="api_key_create")
    app.router.add_get("/{org}/api-keys/{key_id}", get_key, name="api_key")
    app.router.add_post("/{org}/api-keys/{key_id}/revoke", revoke_key, name="api_key_revoke")
    app.router.add_post("/{org}/api-keys/{key_id}/rotate", rotate_key, name="api_key_rotate")
    return app
