"""GET /openapi.json documents exactly the routes create_app registers: a new route
without its operation in gateway.http.openapi (or an operation left after its route
went) fails here, naming it; and each request body exactly the fields its route's
validation accepts."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.config import load_config
from gateway.http.app import create_app
from gateway.http.openapi import document
from gateway.params import UNDERSTOOD
from gateway.surfaces import embeddings, messages, responses_request
from tests.support.harness import Credentials

METHODS = ("get", "put", "post", "delete", "patch")


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route of ``app`` and its sub-applications (their
    paths include the prefix once added), as gateway.http.middleware.errors walks them;
    HEAD (added with each GET) and OPTIONS are not operations of their own."""
    out: set[tuple[str, str]] = set()

    def walk(router: web.UrlDispatcher) -> None:
        for resource in router.resources():
            if isinstance(resource, web.PrefixedSubAppResource):
                walk(resource._app.router)
                continue
            for route in resource:
                if route.method not in ("HEAD", "OPTIONS", "*"):
                    out.add((route.method, resource.canonical))

    walk(app.router)
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in METHODS
        if method in item
    }


def _app(creds: Credentials, redis_url: str) -> web.Application:
    return create_app(load_config(creds.config_dir, creds.env), redis_url)


def test_every_route_is_documented_and_nothing_else(creds: Credentials, redis_url: str) -> None:
    registered = routes(_app(creds, redis_url))
    described = documented(document())
    assert registered - described == set(), "routes without an operation in the document"
    assert described - registered == set(), "operations of the document that no route serves"
    # Not vacuous: the API's routes are all there.
    assert ("POST", "/v1/projects/{project_ref}/chat/completions") in registered
    assert ("GET", "/openapi.json") in registered
    assert len(registered) == 20  # 15, and the control plane's 5


async def _handler(request: web.Request) -> web.Response:
    return web.json_response({})


def test_a_route_added_without_docs_is_named(creds: Credentials, redis_url: str) -> None:
    """The walk sees routes added to the root and to a sub-application, as create_app
    adds them."""
    app = _app(creds, redis_url)
    app.router.add_delete("/admin/reload", _handler)
    orgs = web.Application()
    orgs.router.add_get("/orgs/{org}/api-keys", _handler)
    app.add_subapp("/v2/", orgs)
    assert routes(app) - documented(document()) == {
        ("DELETE", "/admin/reload"),
        ("GET", "/v2/orgs/{org}/api-keys"),
    }


def test_every_operation_is_complete() -> None:
    """Each operation has a unique id, a success and an error answer, and says how it is
    authenticated; each API operation names its project."""
    doc = document()
    ids: list[str] = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            where = f"{method.upper()} {path}"
            ids.append(operation["operationId"])
            statuses = set(operation["responses"])
            assert statuses & {"200", "201"}, where
            assert "security" in operation, where
            if path.startswith("/v1/"):
                assert {"401", "404", "500"} <= statuses, where
                assert operation["security"], where
                params = [*item.get("parameters", ()), *operation.get("parameters", ())]
                names = [p.get("$ref", p.get("name", "")).rsplit("/", 1)[-1] for p in params]
                assert ("ProjectRef" if path.startswith("/v1/projects/") else "org") in names, where
                for response in operation["responses"].values():
                    # every answer, errors included, names its request
                    assert "$ref" in response or "X-Request-Id" in response["headers"], where
    assert len(ids) == len(set(ids))


def test_request_bodies_list_the_fields_validation_accepts() -> None:
    """A parameter added to (or dropped from) a route's validation is added to (or
    dropped from) its request body here."""
    schemas = document()["components"]["schemas"]
    expected = {
        "ChatCompletionRequest": UNDERSTOOD,
        "ResponsesRequest": responses_request.ACCEPTED,
        "MessagesRequest": messages.CREATE_FIELDS,
        "CountTokensRequest": messages.COUNT_FIELDS,
        "EmbeddingsRequest": embeddings.FIELDS,
    }
    for name, fields in expected.items():
        assert set(schemas[name]["properties"]) == set(fields), name
        assert schemas[name]["additionalProperties"] is False, name
