"""Gateway bugs the schemathesis run found (tests/integration/openapi/test_openapi_schemathesis.py),
each kept as a regression reproducer once fixed (FOUND_BUGS), and the run's hooks.

Each was the same kind of bug: a request field that must be a string was looked up in
a set or dict before its type was checked, so an object or array there (``{}``, ``[]``)
raised TypeError (unhashable) and the answer was a 500 instead of a 422 naming the
field. Fixed in the surfaces' parsers (the type checked first).

This module is also the schemathesis run's hooks module: ``filter_failure`` drops a 500
whose request matches a bug still open in KNOWN_BUGS (none today), and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from aiohttp.test_utils import TestClient

from gateway.config import Config
from tests.support.harness import Credentials, bearer

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
FOUND_BUGS = (
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


# Bugs found and not fixed yet: their 500s are filtered out of the run (none today).
KNOWN_BUGS: tuple[KnownBug, ...] = ()


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


def _field(bug: KnownBug) -> str:
    return ".".join(bug.field).replace(".*", "[0]")


@pytest.mark.parametrize(
    "bug", FOUND_BUGS, ids=[f"{b.operation.rsplit('/', 1)[-1]}-{_field(b)}" for b in FOUND_BUGS]
)
async def test_a_found_bug_is_a_422_naming_the_field(
    gateway: tuple[TestClient[Any, Any], Config, Credentials], bug: KnownBug
) -> None:
    """Each reproducer schemathesis (or a search for its pattern) found, once a 500, is
    a 422 naming the field (or the object holding it)."""
    client, _, creds = gateway
    method, path = bug.operation.split(" ", 1)
    resp = await client.request(
        method, path.format(project_ref="alpha"), json=bug.body, headers=bearer(creds.key)
    )
    body = await resp.json()
    assert resp.status == 422, (resp.status, body)
    assert bug.field[0] in str(body), body


def test_the_filter_matches_only_the_known_shapes() -> None:
    """A known bug's filter keeps every failure of another shape (checked on a sample
    bug, since none is open)."""
    sample = FOUND_BUGS[0]
    assert sample.matches(sample.operation, {"tool_choice": {"type": {}}})
    assert not sample.matches(sample.operation, {"tool_choice": {"type": "function"}})
    assert not sample.matches(f"POST {V1}/chat/completions", {"tool_choice": {"type": {}}})
    assert not sample.matches(sample.operation, "not an object")
    assert known_bug(sample.operation, sample.body) is None  # nothing is filtered today
