"""GET /openapi.json: served without auth, a valid OpenAPI 3.1 document by a maintained
validator (openapi-spec-validator), and the error bodies the gateway answers match what
it documents for them under both wire profiles and the surfaces' own shapes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.config import Config
from gateway.http.openapi import document
from tests.support.harness import Credentials, GatewayFactory, bearer, chat_body, provider_entry
from tests.support.upstream import FakeUpstream, Reply, openai_error

Gateway = tuple[TestClient[Any, Any], Config, Credentials]
_BASE = "urn:karta:openapi"


async def test_served_without_auth_as_the_document(gateway: Gateway) -> None:
    client, _, _ = gateway
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert resp.headers["X-Request-Id"]
    body = await resp.read()
    assert orjson.loads(body) == document()
    again = await client.get("/openapi.json", headers=bearer("not-a-key"))
    assert again.status == 200  # no auth is read on it, a bad credential included
    assert await again.read() == body  # built once


async def test_the_served_document_is_valid_openapi_3_1(gateway: Gateway) -> None:
    client, _, _ = gateway
    served = await (await client.get("/openapi.json")).json()
    assert served["openapi"].startswith("3.1.")
    validate(served, cls=OpenAPIV31SpecValidator)  # raises, naming the problem


def test_the_validator_rejects_a_broken_document() -> None:
    """The check above can fail: a dangling $ref, a path parameter left undeclared."""
    broken = orjson.loads(orjson.dumps(document()))
    broken["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] = {"$ref": "#/components/schemas/NoSuchSchema"}
    with pytest.raises(Exception, match="NoSuchSchema"):
        validate(broken, cls=OpenAPIV31SpecValidator)
    undeclared = orjson.loads(orjson.dumps(document()))
    undeclared["paths"]["/v1/projects/{project_ref}/usage"]["get"]["parameters"] = []
    with pytest.raises(Exception, match="project_ref"):
        validate(undeclared, cls=OpenAPIV31SpecValidator)


def _response_validator(path: str, method: str, status: int) -> Draft202012Validator:
    """A validator of the JSON body the document gives ``status`` of an operation."""
    doc = document()
    registry: Registry[Any] = Registry().with_resource(
        _BASE, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    response = doc["paths"][path][method]["responses"][str(status)]
    pointer = response.get("$ref")
    if pointer is None:
        schema = response["content"]["application/json"]["schema"]
    else:
        schema = {"$ref": f"{_BASE}{pointer}/content/application~1json/schema"}
    return Draft202012Validator(schema, registry=registry)


def _check(path: str, method: str, status: int, body: Any) -> None:
    errors = [e.message for e in _response_validator(path, method, status).iter_errors(body)]
    assert errors == [], (status, body)


V1 = "/v1/projects/{project_ref}"


async def test_error_bodies_match_the_document(make_gateway: GatewayFactory) -> None:
    """One project per shape: karta (alpha), openai (beta), and the surfaces' own."""
    tiny = {"budgets": {"project": {"month": {"total_tokens": 10}}}}
    client, _, creds = await make_gateway(projects={"alpha": tiny, "beta": tiny})
    key = bearer(creds.key)
    chat = f"{V1}/chat/completions"
    cases: list[tuple[str, str, str, dict[str, Any] | None, dict[str, str], int]] = [
        # (path, method, project, body, headers, status)
        (chat, "post", "alpha", chat_body(), {}, 401),
        (chat, "post", "alpha", chat_body(), key, 402),
        (chat, "post", "beta", chat_body(), key, 402),
        (chat, "post", "alpha", {"messages": []}, key, 422),
        (chat, "post", "beta", {"messages": []}, key, 422),
        (chat, "post", "alpha", chat_body(model="nope"), key, 404),
        (chat, "post", "sleepy", chat_body(), key, 409),
        (f"{V1}/usage", "get", "nope", None, key, 404),
        (f"{V1}/session-tokens", "post", "alpha", {"ttl_seconds": 1}, key, 422),
        (f"{V1}/session-tokens", "post", "alpha", {}, bearer(creds.read_key), 403),
        (f"{V1}/responses", "post", "alpha", {"input": []}, key, 422),
        (f"{V1}/responses/{{response_id}}", "get", "alpha", None, key, 404),
        (f"{V1}/v1/messages", "post", "alpha", {"model": "default"}, key, 422),
        (f"{V1}/v1/messages", "post", "alpha", None, {}, 401),
        (f"{V1}/v1/models", "get", "gamma", None, key, 404),
        ("/admin/reload", "post", "", None, key, 403),
    ]
    for path, method, project, body, headers, status in cases:
        url = path.format(project_ref=project, response_id="resp_nope")
        resp = await client.request(method, url, json=body, headers=headers)
        assert resp.status == status, (url, await resp.text())
        assert resp.headers["X-Request-Id"]
        _check(path, method, status, await resp.json())


def test_a_body_off_the_document_is_caught() -> None:
    """The comparison above can fail: the other profile's shape is no karta 402, and a
    karta body missing a documented member is not one either."""
    validator = _response_validator(f"{V1}/v1/messages", "post", 402)
    assert not validator.is_valid({"error": "budget_exhausted", "message": "no"})
    karta = _response_validator(f"{V1}/chat/completions", "post", 404)
    assert karta.is_valid({"detail": "project not found", "message": "project not found"})
    assert not karta.is_valid({"detail": "project not found"})


async def test_upstream_and_limit_errors_match_the_document(
    make_gateway: GatewayFactory, upstream: FakeUpstream
) -> None:
    """The statuses a fuzzer does not reach: the provider failing (502), rate limiting
    (429) or rejecting its key (422), the provider key unset (503), a body over the
    limit (413), in each route family's shape."""
    keyless = {"routes": [{"provider": "nokey", "model": "gpt-4o-mini"}]}
    client, _, creds = await make_gateway(
        gateway={
            "limits": {"max_body_bytes": 4000},
            "providers": {
                "nokey": {
                    **provider_entry(upstream.base_url),
                    "api_key_env": "KARTA_TEST_KEY_NEVER_SET",
                }
            },
        },
        projects={"keyless": {"models": {"default": keyless}}},
    )
    key = bearer(creds.key)
    chat, messages = f"{V1}/chat/completions", f"{V1}/v1/messages"
    anthropic_body = {
        "model": "default",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    cases: list[tuple[str, str, dict[str, Any], Reply | None, int]] = [
        # (path, project, body, the provider's reply, status)
        (chat, "alpha", chat_body(), Reply(status=500, json=openai_error(500)), 502),
        (chat, "beta", chat_body(), Reply(status=500, json=openai_error(500)), 502),
        (messages, "alpha", anthropic_body, Reply(status=500, json=openai_error(500)), 502),
        (chat, "alpha", chat_body(), Reply(status=429, json=openai_error(429)), 429),
        (
            f"{V1}/responses",
            "alpha",
            {"input": "Hi"},
            Reply(status=429, json=openai_error(429)),
            429,
        ),
        (chat, "alpha", chat_body(), Reply(status=401, json=openai_error(401)), 422),
        (chat, "beta", chat_body(), Reply(status=401, json=openai_error(401)), 422),
        (chat, "keyless", chat_body(), None, 503),
        (chat, "alpha", chat_body("x" * 5000), None, 413),
        (messages, "alpha", {**anthropic_body, "system": "x" * 5000}, None, 413),
    ]
    for path, project, body, reply, status in cases:
        if reply is not None:
            upstream.script(reply)
        resp = await client.post(path.format(project_ref=project), json=body, headers=key)
        assert resp.status == status, (path, project, await resp.text())
        _check(path, "post", status, await resp.json())
        if status == 503:
            assert resp.headers["x-should-retry"] == "false"
