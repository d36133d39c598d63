"""Fuzz through the running gateway: any body, content type and request id, with a
valid key or a broken one, gets a documented status with a JSON body, never a 500,
and nothing reaches the upstream unless the request was valid."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.test_request_fuzz import body_like
from tests.fuzz.test_upstream_fuzz import json_values
from tests.harness import bearer

VALID = b'{"messages": [{"role": "user", "content": "hi"}], "stream": false}'
DOCUMENTED = {200, 401, 402, 403, 404, 409, 413, 422, 429, 502, 503, 504}

# Mostly valid requests too, so that the path through budget, upstream and relay runs.
valid_bodies = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=30)}),
            min_size=1,
            max_size=3,
        )
    },
    optional={
        "stream": st.booleans(),
        "max_tokens": st.integers(-5, 10**7),
        "temperature": st.floats(-1, 3),
        "model": st.sampled_from(["default", "nope"]),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
raw_bodies = (
    valid_bodies.map(orjson.dumps)
    | (body_like | json_values).map(orjson.dumps)
    | st.binary(max_size=64)
    | st.just(b'{"messages": [{"role": "user", "content": "hi"}], "n": 1e999}')
    | st.just(b"[" * 2000 + b"]" * 2000)
    | st.just(b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 30 + b"}")
)


# One gateway (and its budgets) serves every example: that is the point, not a leak.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    raw_bodies,
    st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]),
    st.sampled_from(["", "abc", "x" * 200, "ok-request-id-123", "../../etc"]),
    st.sampled_from(["key", "broken", "none"]),
    st.none(),
)
# Fixed cases on top of the generated ones, with the status each must get: the fuzzed
# path does reach the upstream and back, and the refusals are the documented ones.
@example(VALID, "application/json", "", "key", 200)
@example(VALID.replace(b'"stream": false', b'"stream": true'), "", "ok-request-id-123", "key", 200)
@example(b"{", "application/json", "", "key", 422)
@example(VALID, "application/json", "", "none", 401)
@example(VALID, "application/json", "", "broken", 401)
async def test_any_request_gets_a_documented_status_and_a_json_body(
    gateway: Any, raw: bytes, content_type: str, request_id: str, auth: str, expect: int | None
) -> None:
    client, _, creds = gateway
    headers: dict[str, str] = {}
    if auth == "key":
        headers.update(bearer(creds.key))
    elif auth == "broken":
        headers["Authorization"] = "Bearer kt_live_" + "x" * 20
    if content_type:
        headers["Content-Type"] = content_type
    if request_id:
        headers["X-Request-Id"] = request_id
    resp = await client.post("/v1/projects/alpha/chat/completions", data=raw, headers=headers)
    assert resp.status in DOCUMENTED, (resp.status, await resp.text())
    if expect is not None:
        assert resp.status == expect, await resp.text()
    if resp.status != 200:
        body = await resp.json(content_type=None)
        assert isinstance(body, dict)
        assert body
    else:
        await resp.read()
