"""Hypothesis strategies for the fuzz suites: JSON of any shape, and objects shaped
like chat requests and provider chunks whose every field may hold any JSON instead."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Any JSON value.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with these keys (each optional), their values of the right shape or any."""
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})


usage_like = shaped(
    {
        "prompt_tokens": st.integers(0, 10**6),
        "completion_tokens": st.integers(0, 10**6),
        "total_tokens": st.integers(0, 10**6),
        "prompt_tokens_details": shaped({"cached_tokens": st.integers(0, 10**6)}),
        "completion_tokens_details": shaped({"reasoning_tokens": st.integers(0, 10**6)}),
    }
)
delta_like = shaped(
    {
        "role": st.just("assistant"),
        "content": st.text(max_size=8),
        "tool_calls": st.lists(json_values, max_size=2),
        "refusal": st.text(max_size=4),
    }
)
choice_like = shaped(
    {
        "index": st.integers(0, 3),
        "delta": delta_like,
        "message": shaped({"role": st.just("assistant"), "content": st.text(max_size=8)}),
        "finish_reason": st.sampled_from(["stop", "length", "tool_calls"]),
        "logprobs": st.none(),
    }
)
chunk_like = shaped(
    {
        "id": st.text(max_size=8),
        "object": st.just("chat.completion.chunk"),
        "created": st.integers(0, 2**40),
        "model": st.text(max_size=8),
        "choices": st.lists(choice_like, max_size=3),
        "usage": usage_like,
        "x_groq": shaped({"usage": usage_like}),
    }
)

# ---------------------------------------------------------------------- client requests

part_like = shaped(
    {
        "type": st.sampled_from(["text", "image_url", "input_audio", "file"]),
        "text": st.text(max_size=10),
        "image_url": shaped(
            {"url": st.sampled_from(["https://x/y.png", "data:image/png;base64,AAAA"])}
        ),
    }
)
message_like = shaped(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.text(max_size=20) | st.lists(part_like, max_size=3),
        "name": st.text(max_size=6),
        "tool_call_id": st.text(max_size=6),
        "tool_calls": st.lists(
            shaped(
                {
                    "id": st.text(max_size=4),
                    "type": st.just("function"),
                    "function": shaped(
                        {"name": st.text(max_size=4), "arguments": st.text(max_size=8)}
                    ),
                }
            ),
            max_size=2,
        ),
    }
)
tool_like = shaped(
    {
        "type": st.just("function"),
        "function": shaped(
            {
                "name": st.text(max_size=6),
                "description": st.text(max_size=6),
                "parameters": shaped({"type": st.just("object")}),
            }
        ),
    }
)
body_like = shaped(
    {
        "messages": st.lists(message_like, max_size=4),
        "model": st.text(max_size=6),
        "stream": st.booleans(),
        "stream_options": shaped({"include_usage": st.booleans()}),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 10_000),
        "max_completion_tokens": st.integers(1, 10_000),
        "n": st.integers(1, 3),
        "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=3),
        "tools": st.lists(tool_like, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "parallel_tool_calls": st.booleans(),
        "response_format": shaped(
            {
                "type": st.sampled_from(["text", "json_object", "json_schema"]),
                "json_schema": shaped(
                    {"name": st.text(max_size=4), "schema": shaped({"type": st.just("object")})}
                ),
            }
        ),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "user": st.text(max_size=6),
    }
)
