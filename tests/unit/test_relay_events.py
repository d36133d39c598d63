"""The stream relay (gateway.proxy._Relay) reading typed stream events: where a Usage
sits among the chunks decides what it means to the meter (gateway.pipeline.meter),
exactly as when usage rode in the chunks' ``usage`` members.
"""

from __future__ import annotations

import types
from typing import Any

import orjson

from gateway.providers.base import StreamEvent
from gateway.proxy import _Relay
from gateway.usage import Usage
from gateway.wire import PROFILES
from tests.support.upstream import chunk

CEILING = 100


def relay() -> _Relay:
    # The attributes of a call the relay reads, and no more.
    call: Any = types.SimpleNamespace(
        alias="default",
        first_token_at=None,
        chat=types.SimpleNamespace(include_usage=True, n=1),
        input_bound=50,
        output_ceiling=CEILING,
    )
    return _Relay(call, "chatcmpl_test", PROFILES["openai"])


def relayed(data: bytes) -> list[dict[str, Any]]:
    frames = [f for f in data.split(b"\n\n") if f]
    return [orjson.loads(f.removeprefix(b"data: ")) for f in frames]


def test_a_usage_that_came_with_the_last_finish_is_final() -> None:
    r = relay()
    usage = Usage(input_tokens=11, output_tokens=7)
    events: list[StreamEvent] = [chunk("Hi"), (chunk(None, "stop"), usage)]
    out = relayed(r.encode(events))
    assert [c["choices"][0]["finish_reason"] for c in out] == [None, "stop"]
    assert all(c["id"] == "chatcmpl_test" and c["model"] == "default" for c in out)
    assert r.meter.billed() == (usage, None)


def test_a_usage_on_its_own_before_the_finish_is_a_running_count() -> None:
    """An early usage (before the finish, in the same read) is a floor, not the bill."""
    r = relay()
    early = Usage(input_tokens=11, output_tokens=0)
    assert len(relayed(r.encode([early, chunk("Hi"), chunk(None, "stop")]))) == 2
    billed, reason = r.meter.billed()
    assert reason == "no_usage"
    assert billed is not None
    assert billed.estimated
    assert billed.output_tokens == CEILING


def test_a_usage_on_its_own_after_the_finish_is_final() -> None:
    r = relay()
    usage = Usage(input_tokens=11, output_tokens=9)
    assert len(relayed(r.encode([chunk("Hi", "stop"), usage]))) == 1
    assert r.meter.billed() == (usage, None)


def test_a_running_count_past_the_ceiling_keeps_its_own_chunk_back() -> None:
    """vLLM's count on a chunk says that chunk went past the reserved output: it is not
    relayed (the one before it is), and the relay stops there."""
    r = relay()
    events: list[StreamEvent] = [
        (chunk("a " * 30), Usage(input_tokens=11, output_tokens=60)),
        (chunk("b " * 30), Usage(input_tokens=11, output_tokens=120)),
        chunk("c"),
    ]
    out = relayed(r.encode(events))
    assert [c["choices"][0]["delta"]["content"][0] for c in out] == ["a"]
    assert r.meter.over_ceiling
    billed, reason = r.meter.billed()
    assert reason == "output_limit"
    assert billed is not None
    assert billed.output_tokens == 120


def test_a_usage_on_its_own_past_the_ceiling_keeps_the_chunk_before_it() -> None:
    r = relay()
    events: list[StreamEvent] = [chunk("a"), Usage(input_tokens=11, output_tokens=150), chunk("b")]
    out = relayed(r.encode(events))
    assert [c["choices"][0]["delta"]["content"] for c in out] == ["a"]
    assert r.meter.over_ceiling
