"""Fuzz through the running gateway: any body, content type and request id, with a
valid key or a broken one, gets a documented status with a JSON body, never a 500,
and nothing reaches the upstream unless the request was valid."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.sse import SSEParser
from tests.support.harness import Gateway, GatewayFactory, bearer
from tests.support.strategies import body_like, chunk_like, json_values
from tests.support.upstream import FakeUpstream, Reply

VALID = b'{"messages": [{"role": "user", "content": "hi"}], "stream": false}'
STREAM = b'{"messages": [{"role": "user", "content": "hi"}], "stream": true}'
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
    gateway: Gateway, raw: bytes, content_type: str, request_id: str, auth: str, expect: int | None
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


@pytest.fixture
async def tolerant_gateway(make_gateway: GatewayFactory) -> Any:
    """A gateway whose circuit breaker never opens: every example reaches the relay
    (a run of failures before the first byte would otherwise answer 503 for 30 s)."""
    return await make_gateway(gateway={"resilience": {"breaker": {"failure_threshold": 10**6}}})


GOOD_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.lists(chunk_like | json_values, max_size=5),
    st.booleans(),
    st.integers(1, 120),
    st.none(),
)
# Pinned: a well-formed stream in small slices ends in [DONE]; one with a bad chunk in
# the middle ends in the error event.
@example(GOOD_CHUNKS, True, 7, "[DONE]")
@example([GOOD_CHUNKS[0], {"choices": "bad"}, *GOOD_CHUNKS[1:]], True, 500, "error")
async def test_any_upstream_stream_ends_in_done_or_an_error_event(
    tolerant_gateway: Any,
    upstream: FakeUpstream,
    chunks: list[Any],
    done: bool,
    slice_size: int,
    expect_last: str | None,
) -> None:
    """Whatever the provider streams, in whatever slices: the client gets a documented
    status before the first byte, or a stream that ends in [DONE] or an error event."""
    client, _, creds = tolerant_gateway
    sse = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    upstream.script(Reply(sse=sse + (b"data: [DONE]\n\n" if done else b""), slice_size=slice_size))
    resp = await client.post(
        "/v1/projects/alpha/chat/completions", data=STREAM, headers=bearer(creds.key)
    )
    if resp.status != 200:
        assert resp.status in (502, 504), (resp.status, await resp.text())
        assert isinstance(await resp.json(), dict)
        return
    parser = SSEParser()
    events = parser.feed(await resp.read()) + parser.close()
    assert events
    assert events[-1].event in ("[DONE]", "error"), events[-1]
    if expect_last is not None:
        assert events[-1].event == expect_last, events
    for event in events[:-1]:
        assert event.event == "chunk", event
        assert isinstance(orjson.loads(event.data), dict)
