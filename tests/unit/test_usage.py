"""Unit tests for gateway.usage: the reservation bound, usage parsing and cost (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import PriceConfig
from gateway.sse import SSEParser
from gateway.usage import (
    MAX_REPORTED_TOKENS,
    UnboundedInput,
    Usage,
    cost_nano,
    estimate,
    from_openai,
    input_token_bound,
    output_ceiling,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
IMAGE_BOUND = 1600
# Chat templates of OpenAI models: 3 tokens per message plus 3 priming the reply.
OPENAI_PER_MESSAGE = 3
OPENAI_PER_REQUEST = 3


def _bound(body: dict[str, Any], image_bound: int = IMAGE_BOUND) -> int:
    return input_token_bound(body, image_bound)


def _chat(*texts: str, role: str = "user") -> dict[str, Any]:
    return {"messages": [{"role": role, "content": t} for t in texts]}


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


# --------------------------------------------------------------------------- input bound


@pytest.mark.parametrize(
    "texts",
    [
        ("Hello",),
        ("",),
        ("You are terse.", "What is the capital of the UK?"),
        ("a" * 10_000,),
        ("x y z " * 500, "\n\n\t" * 100),
    ],
)
def test_bound_covers_utf8_bytes_and_openai_overhead(texts: tuple[str, ...]) -> None:
    body = _chat(*texts)
    text_bytes = sum(_utf8(t) for t in texts)
    role_bytes = sum(_utf8(m["role"]) for m in body["messages"])
    # Byte-level BPE: every token covers >= 1 byte, so bytes bound the text tokens.
    assert _bound(body) >= text_bytes + role_bytes
    assert (
        _bound(body)
        >= text_bytes + role_bytes + OPENAI_PER_MESSAGE * len(texts) + OPENAI_PER_REQUEST
    )


@pytest.mark.parametrize(
    "text",
    [
        "é" * 100,  # 2 bytes per char
        "日本語のテキスト" * 50,  # 3 bytes per char
        "🙂" * 100,  # 4 bytes per char
        "mixed ascii + ünïcödé + 中文 + 🚀",
    ],
)
def test_multibyte_text_counts_bytes_not_chars(text: str) -> None:
    assert _utf8(text) > len(text)
    growth = _bound(_chat(text)) - _bound(_chat(""))
    assert growth >= _utf8(text)


def test_lone_surrogate_does_not_crash_and_is_counted() -> None:
    text = "a\ud800b"  # JSON allows "\ud800": a parsed body can carry it
    assert _bound(_chat(text)) - _bound(_chat("")) >= 3


def test_text_content_parts_count_like_strings() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "héllo wörld"}]}]}
    assert _bound(parts) - _bound(_chat("")) >= _utf8("héllo wörld")
    two = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "abc"}, {"type": "text", "text": "défg"}],
            }
        ]
    }
    assert _bound(two) - _bound(_chat("")) >= _utf8("abc") + _utf8("défg")


def _with_images(count: int) -> dict[str, Any]:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    parts = [{"type": "text", "text": "What is this?"}] + [image] * count
    return {"messages": [{"role": "user", "content": parts}]}


def test_image_parts_add_the_image_bound() -> None:
    for count in (1, 2, 5):
        body = _with_images(count)
        assert _bound(body, 1600) - _bound(_with_images(0), 1600) >= count * 1600
        # Linear in the configured per-image bound.
        assert _bound(body, 1600) - _bound(body, 100) == count * 1500


def test_large_data_url_image_is_bounded_by_the_image_bound_only() -> None:
    data_url = "data:image/png;base64," + "A" * 200_000
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}]}
        ]
    }
    assert _bound(body, 1600) >= 1600
    assert _bound(body, 1600) < 10_000  # the image's bytes are not its token cost


def _with_file(file: dict[str, Any]) -> dict[str, Any]:
    parts = [{"type": "text", "text": "Summarise"}, {"type": "file", "file": file}]
    return {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    }


@pytest.mark.parametrize(
    "file",
    [
        {"file_id": "file-abc123"},
        {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
    ],
    ids=["by-id", "inline"],
)
def test_a_file_part_is_bounded_by_the_context_window_only(file: dict[str, Any]) -> None:
    """A document's pages become text and page images upstream: its bytes (or a
    reference's) bound nothing. Only the model's context window does."""
    body = _with_file(file)
    with pytest.raises(UnboundedInput) as info:
        input_token_bound(body, IMAGE_BOUND)
    assert info.value.param == "messages[1].content[1]"
    assert input_token_bound(body, IMAGE_BOUND, 128_000) == 128_000


def test_the_context_window_caps_the_bound() -> None:
    body = _chat("x" * 10_000)
    assert input_token_bound(body, IMAGE_BOUND) > 10_000
    assert input_token_bound(body, IMAGE_BOUND, 4_096) == 4_096
    assert input_token_bound(body, IMAGE_BOUND, 1_000_000) == input_token_bound(body, IMAGE_BOUND)


def test_other_content_parts_are_bounded_by_their_json_size() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "UklGR" * 100, "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [audio]}]}
    assert _bound(body) - _bound(_chat("")) >= len(orjson.dumps(audio))


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_capital",
            "description": "Capital city of a country — accented: é",
            "parameters": {
                "type": "object",
                "properties": {"country": {"type": "string"}},
                "required": ["country"],
            },
        },
    }
]


def test_tools_add_their_json_size() -> None:
    base = _chat("Capital of the UK?")
    with_tools = {**base, "tools": TOOLS}
    compact = len(json.dumps(TOOLS, separators=(",", ":"), ensure_ascii=False).encode())
    assert _bound(with_tools) - _bound(base) >= compact


def test_tool_choice_and_response_format_objects_count() -> None:
    base = _chat("hi")
    choice = {"type": "function", "function": {"name": "get_capital"}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert _bound({**base, "tool_choice": choice}) - _bound(base) >= len(orjson.dumps(choice))
    assert _bound({**base, "response_format": fmt}) - _bound(base) >= len(orjson.dumps(fmt))


def test_assistant_tool_calls_and_tool_results_count() -> None:
    calls = [
        {
            "id": "call_ZR5UUuTt3pf61kjwAJIYdVMj",
            "type": "function",
            "function": {"name": "get_capital", "arguments": '{"country":"UK"}'},
        }
    ]
    turn = {"role": "assistant", "content": None, "tool_calls": calls}
    result = {"role": "tool", "tool_call_id": "call_ZR5UUuTt3pf61kjwAJIYdVMj", "content": "London"}
    user = {"role": "user", "content": "Capital of the UK?"}
    plain = _bound({"messages": [user]})
    with_call = _bound({"messages": [user, turn]})
    with_result = _bound({"messages": [user, turn, result]})
    assert with_call - plain >= len(orjson.dumps(calls)) + OPENAI_PER_MESSAGE
    assert with_result - with_call >= _utf8("London") + len(result["tool_call_id"])


def test_legacy_function_call_in_assistant_turn_counts() -> None:
    """The legacy ``function_call`` of an assistant turn is prompt text like ``tool_calls``."""
    call = {"name": "get_capital", "arguments": '{"country":"' + "United Kingdom " * 200 + '"}'}
    user = {"role": "user", "content": "Capital?"}
    turn = {"role": "assistant", "content": None, "function_call": call}
    plain = _bound({"messages": [user]})
    with_call = _bound({"messages": [user, turn]})
    assert with_call - plain >= len(orjson.dumps(call)) + OPENAI_PER_MESSAGE


def test_name_field_counts() -> None:
    named = {"messages": [{"role": "user", "name": "Zoë_the_user", "content": "hi"}]}
    assert _bound(named) - _bound(_chat("hi")) >= _utf8("Zoë_the_user")


def test_bound_grows_with_per_message_overhead() -> None:
    one = _bound(_chat("ab"))
    two = _bound(_chat("a", "b"))
    assert two > one  # same bytes, one more message
    assert two - one >= OPENAI_PER_MESSAGE
    previous = _bound(_chat(""))
    for n in range(2, 8):
        current = _bound(_chat(*([""] * n)))
        assert current - previous >= OPENAI_PER_MESSAGE + _utf8("user")
        previous = current


def test_bound_is_positive_for_an_empty_message() -> None:
    assert _bound(_chat("")) >= OPENAI_PER_MESSAGE + OPENAI_PER_REQUEST


# --------------------------------------------------------------------------- output ceiling


@pytest.mark.parametrize(
    ("requested", "ceiling", "n", "expected"),
    [
        (None, 100, 1, 100),
        (50, 100, 1, 50),
        (100, 100, 1, 100),
        (500, 100, 1, 100),
        (1, 4096, 1, 1),
        (50, 100, 3, 150),
        (500, 100, 3, 300),
        (None, 100, 2, 200),
        (None, 100, 0, 100),
    ],
)
def test_output_ceiling(requested: int | None, ceiling: int, n: int, expected: int) -> None:
    assert output_ceiling(requested, ceiling, n) == expected


def test_output_ceiling_default_n() -> None:
    assert output_ceiling(None, 256) == 256
    assert output_ceiling(10, 256) == 10


# --------------------------------------------------------------------------- cost


def _price(input_usd: str, output_usd: str, cached_usd: str | None = None) -> PriceConfig:
    # USD strings: the model's validator turns them into the int nano-USD fields.
    return PriceConfig.model_validate(
        {"input": input_usd, "output": output_usd, "cached_input": cached_usd}
    )


def test_price_is_nano_usd_per_million() -> None:
    price = _price("2.50", "10.00", "1.25")
    assert (price.input, price.output, price.cached_input) == (
        2_500_000_000,
        10_000_000_000,
        1_250_000_000,
    )


def test_cost_exact() -> None:
    price = _price("0.15", "0.60")
    # 1000 * 150 nano + 500 * 600 nano
    assert cost_nano(Usage(1000, 500), price) == 150_000 + 300_000
    assert cost_nano(Usage(1_000_000, 1_000_000), price) == 750_000_000
    assert cost_nano(Usage(0, 0), price) == 0


def test_cost_rounds_up() -> None:
    price = _price("0.000001", "0.000001")  # 1000 nano-USD per million tokens
    assert cost_nano(Usage(1, 0), price) == 1  # 0.001 nano -> 1
    assert cost_nano(Usage(1000, 0), price) == 1  # exactly 1
    assert cost_nano(Usage(1001, 0), price) == 2  # 1.001 -> 2
    assert cost_nano(Usage(0, 999_999), price) == 1000  # 999.999 -> 1000
    price = _price("0.15", "0.60")
    assert cost_nano(Usage(1, 0), price) == 150
    assert cost_nano(Usage(0, 1), _price("0.15", "0.000000001")) == 1  # 1e-6 nano -> 1


def test_cost_never_below_the_exact_amount() -> None:
    price = _price("0.15", "0.60", "0.075")
    for tokens in (1, 7, 13, 999, 12_345, 987_654_321):
        usage = Usage(tokens, tokens // 3 + 1, cached_input_tokens=tokens // 2)
        exact_numerator = (
            (usage.input_tokens - usage.cached_input_tokens) * price.input
            + usage.cached_input_tokens * (price.cached_input or 0)
            + usage.output_tokens * price.output
        )
        cost = cost_nano(usage, price)
        assert cost * 1_000_000 >= exact_numerator
        assert (cost - 1) * 1_000_000 < exact_numerator


def test_cost_uses_cached_input_price_for_cached_tokens() -> None:
    price = _price("2.50", "10.00", "1.25")
    usage = Usage(input_tokens=1000, output_tokens=100, cached_input_tokens=400)
    # 600 * 2500 + 400 * 1250 + 100 * 10000 nano
    assert cost_nano(usage, price) == 1_500_000 + 500_000 + 1_000_000


def test_cached_tokens_at_input_price_when_no_cached_price() -> None:
    price = _price("2.50", "10.00")
    cached = Usage(input_tokens=1000, output_tokens=0, cached_input_tokens=400)
    assert cost_nano(cached, price) == cost_nano(Usage(1000, 0), price) == 2_500_000


def test_cached_tokens_clamped_to_input_tokens() -> None:
    price = _price("2.50", "10.00", "1.25")
    bogus = Usage(input_tokens=100, output_tokens=0, cached_input_tokens=500)
    assert cost_nano(bogus, price) == 100 * 1250


def test_cost_without_price_is_zero() -> None:
    assert cost_nano(Usage(1000, 1000), None) == 0


# --------------------------------------------------------------------------- estimate


def test_estimate_bills_the_input_bound_and_the_output_ceiling() -> None:
    assert estimate(120, 50) == Usage(120, 50, estimated=True)
    assert estimate(120, 50, 30) == Usage(120, 50, estimated=True)


def test_estimate_never_below_an_output_floor_past_the_ceiling() -> None:
    assert estimate(120, 50, 51) == Usage(120, 51, estimated=True)


def test_estimate_total_and_flags() -> None:
    usage = estimate(7, 9)
    assert usage.total_tokens == 16
    assert usage.estimated is True
    assert usage.cached_input_tokens == 0
    assert usage.reasoning_tokens == 0


# --------------------------------------------------------------------------- from_openai


def _chunks(name: str) -> list[tuple[str | None, dict[str, Any]]]:
    parser = SSEParser()
    raw = (DATA_DIR / name).read_bytes()
    events = parser.feed(raw) + parser.close()
    return [(e.event, json.loads(e.data)) for e in events if e.data != b"[DONE]"]


def _usage_chunks(name: str) -> list[dict[str, Any]]:
    return [c for _, c in _chunks(name) if c.get("usage") is not None]


def test_from_openai_text_fixture() -> None:
    chunks = _chunks("openai_chat_text_include_usage.sse")
    assert len(chunks) == 11
    [usage_chunk] = _usage_chunks("openai_chat_text_include_usage.sse")
    assert usage_chunk["choices"] == []
    usage = from_openai(usage_chunk["usage"])
    assert usage == Usage(
        input_tokens=78, output_tokens=9, cached_input_tokens=0, reasoning_tokens=0
    )
    assert usage is not None
    assert usage.total_tokens == 87
    assert usage.estimated is False
    # Every other chunk carries "usage": null.
    assert [from_openai(c.get("usage")) for _, c in chunks[:-1]] == [None] * 10


def test_from_openai_tool_call_fixture() -> None:
    [usage_chunk] = _usage_chunks("openai_chat_tool_call_include_usage.sse")
    usage = from_openai(usage_chunk["usage"])
    assert usage == Usage(53, 15, 0, 0)
    assert usage is not None
    assert usage.total_tokens == 68


def test_groq_fixture_has_no_usage() -> None:
    chunks = _chunks("openai_compat_groq_midstream_error_event.sse")
    assert len(chunks) == 95
    assert [from_openai(c.get("usage")) for _, c in chunks] == [None] * 95
    assert chunks[-1][0] == "error"


def test_from_openai_with_cached_and_reasoning_details() -> None:
    usage = from_openai(
        {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0},
        }
    )
    assert usage == Usage(2006, 300, cached_input_tokens=1920, reasoning_tokens=192)


def test_from_openai_null_details_are_zero() -> None:
    usage = from_openai(
        {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
    )
    assert usage == Usage(5, 2, 0, 0)


def test_from_openai_counts_no_request_reaches_are_no_usage() -> None:
    """orjson parses counts up to 2**64 - 1; the budget store holds int64. A count past
    MAX_REPORTED_TOKENS is a broken upstream: no usage, so the caller estimates."""
    biggest = {"prompt_tokens": MAX_REPORTED_TOKENS, "completion_tokens": MAX_REPORTED_TOKENS}
    assert from_openai(biggest) == Usage(MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS, 0, 0)
    for huge in (MAX_REPORTED_TOKENS + 1, 2**63, 2**64 - 1):
        raw = orjson.loads(b'{"prompt_tokens": %d, "completion_tokens": 5}' % huge)
        assert raw["prompt_tokens"] == huge
        assert from_openai(raw) is None
        assert from_openai({"prompt_tokens": 5, "completion_tokens": huge}) is None
        details = {"cached_tokens": huge}
        assert from_openai(
            {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": details}
        ) == Usage(5, 2, 0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "usage",
        {},
        {"prompt_tokens": 5},
        {"completion_tokens": 5},
        {"prompt_tokens": "5", "completion_tokens": 2},
        {"input_tokens": 5, "output_tokens": 2},  # Anthropic names: not OpenAI usage
    ],
)
def test_from_openai_rejects_non_usage(raw: Any) -> None:
    assert from_openai(raw) is None
