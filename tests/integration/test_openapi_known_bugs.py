"""Gateway bugs the schemathesis run found (tests/integration/test_openapi_schemathesis.py),
each pinned by a reproducer that fails until the gateway is fixed.

Every one is the same kind of bug: a request field that must be a string is looked up
in a set or dict before its type is checked, so an object or array there (``{}``,
``[]``) raises TypeError (unhashable) and the answer is a 500 instead of a 422 naming
the field. The fix is in the surface's parser (check ``isinstance(value, str)`` before
the membership test); once it is in, the reproducer passes, its strict xfail fails the
suite, and its entry here is removed.

This module is also the schemathesis run's hooks module: ``filter_failure`` drops a 500
whose request matches a known bug's shape, and nothing else, so the run still fails on
any other server error, on that operation too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from aiohttp.test_utils import TestClient

from gateway.config import Config
from tests.harness import Credentials, bearer

V1 = "/v1/projects/{project_ref}"


@dataclass(frozen=True)
class KnownBug:
    operation: str  # "METHOD /path", as the document names it
    field: tuple[str, ...]  # where in the body an object or array crashes ("*": any item)
    body: dict[str, Any]  # a minimal reproducer
    where: str  # the code that needs the fix

    def matches(self, operation: str, body: Any) -> bool:
        return operation == self.operation and any(
            isinstance(value, dict | list) for value in _values(body, self.field)
        )


def _values(node: Any, path: tuple[str, ...]) -> list[Any]:
    """The values at ``path`` in a JSON value ("*": every item of an array)."""
    if not path:
        return [node]
    head, rest = path[0], path[1:]
    if head == "*":
        items = node if isinstance(node, list) else []
        return [v for item in items for v in _values(item, rest)]
    if isinstance(node, dict) and head in node:
        return _values(node[head], rest)
    return []


_HELLO = [{"role": "user", "content": "Hello"}]
KNOWN_BUGS = (
    KnownBug(
        f"POST {V1}/responses",
        ("tool_choice", "type"),
        {"input": "Hello", "tool_choice": {"type": {}}},
        "gateway/surfaces/responses_request.py _tool_choice: value.get('type') in HOSTED_TOOLS",
    ),
    KnownBug(
        f"POST {V1}/responses",
        ("tools", "*", "type"),
        {"input": "Hello", "tools": [{"type": {}}]},
        "gateway/surfaces/responses_request.py _tools: kind in HOSTED_TOOLS",
    ),
    KnownBug(
        f"POST {V1}/responses",
        ("input", "*", "content", "*", "detail"),
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": "https://x.test/a.png", "detail": {}}
                    ],
                }
            ]
        },
        "gateway/surfaces/responses_request.py _image_part: detail not in _IMAGE_DETAILS",
    ),
    KnownBug(
        f"POST {V1}/v1/messages",
        ("output_config", "effort"),
        {"model": "default", "max_tokens": 8, "messages": _HELLO, "output_config": {"effort": {}}},
        "gateway/surfaces/messages.py _output_config: effort in _CHAT_EFFORTS",
    ),
    KnownBug(
        f"POST {V1}/v1/messages/count_tokens",
        ("output_config", "effort"),
        {"model": "default", "messages": _HELLO, "output_config": {"effort": []}},
        "gateway/surfaces/messages.py _output_config: effort in _CHAT_EFFORTS",
    ),
    KnownBug(
        f"POST {V1}/v1/messages",
        ("service_tier",),
        {"model": "default", "max_tokens": 8, "messages": _HELLO, "service_tier": {}},
        "gateway/surfaces/messages.py _translate: tier not in _SERVICE_TIERS",
    ),
)


def known_bug(operation: str, body: Any) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.matches(operation, body)), None)


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case[Any],
    response: schemathesis.Response,
) -> bool:
    """Keep every failure except a known bug's 500 (pinned below)."""
    operation = f"{str(case.method).upper()} {case.path}"
    return not (response.status_code == 500 and known_bug(operation, case.body) is not None)


class StillA500(Exception):
    """The known bug is still there (the only failure its xfail accepts)."""


def _field(bug: KnownBug) -> str:
    return ".".join(bug.field).replace(".*", "[0]")


@pytest.mark.parametrize(
    "bug",
    [
        pytest.param(
            bug,
            id=f"{bug.operation.rsplit('/', 1)[-1]}-{_field(bug)}",
            marks=pytest.mark.xfail(
                raises=StillA500, strict=True, reason=f"gateway bug (500): {bug.where}"
            ),
        )
        for bug in KNOWN_BUGS
    ],
)
async def test_known_bug_is_a_422_naming_the_field(
    gateway: tuple[TestClient[Any, Any], Config, Credentials], bug: KnownBug
) -> None:
    """The fixed gateway answers the reproducer with a 422 naming the field; today it
    answers 500 (strict xfail: the fix makes this fail, and the entry goes)."""
    client, _, creds = gateway
    method, path = bug.operation.split(" ", 1)
    resp = await client.request(
        method, path.format(project_ref="alpha"), json=bug.body, headers=bearer(creds.key)
    )
    body = await resp.json()
    if resp.status == 500:
        raise StillA500(body)
    assert resp.status == 422, (resp.status, body)
    # The fix may name the field or the object holding it (tool_choice, tools[0], ...).
    assert bug.field[0] in str(body), body


def test_the_filter_matches_only_the_known_shapes() -> None:
    """A string (or absent) field is no known bug: only its object or array values are."""
    responses = f"POST {V1}/responses"
    assert known_bug(responses, {"tool_choice": {"type": {}}}) is not None
    assert known_bug(responses, {"tools": [{"type": "function"}, {"type": []}]}) is not None
    assert known_bug(responses, {"tool_choice": {"type": "function"}}) is None
    assert known_bug(responses, {"tools": [{"type": "web_search"}]}) is None
    assert known_bug(responses, {"input": "Hello"}) is None
    assert known_bug(f"POST {V1}/chat/completions", {"tool_choice": {"type": {}}}) is None
    assert known_bug(responses, "not an object") is None
