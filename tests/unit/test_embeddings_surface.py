"""Unit tests for gateway.surfaces.embeddings (pure)."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from gateway.errors import ValidationFailed
from gateway.surfaces.embeddings import (
    PER_ITEM_TOKENS,
    client_answer,
    demo_answer,
    demo_vector,
    parse_request,
    upstream_body,
)


def refused(body: Any) -> dict[str, Any]:
    with pytest.raises(ValidationFailed) as info:
        parse_request(body)
    return info.value.body


@pytest.mark.parametrize(
    ("value", "bound"),
    [
        ("hello", 5 + PER_ITEM_TOKENS),
        ("héllo", 6 + PER_ITEM_TOKENS),
        (["ab", "cde"], 5 + 2 * PER_ITEM_TOKENS),
        ([1, 2, 3], 3 + PER_ITEM_TOKENS),
        ([[1, 2], [3]], 3 + 2 * PER_ITEM_TOKENS),
    ],
)
def test_the_input_bound(value: Any, bound: int) -> None:
    assert parse_request({"model": "embed", "input": value}).input_bound == bound


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "n_predict": 1}, "n_predict"),
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", 3.5]}, "input[1]"),
        ({"input": [[1, -2]]}, "input[0]"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "model": ""}, "model"),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    assert refused(body)["param"] == param


def test_upstream_body_takes_the_routes_model() -> None:
    request = parse_request({"model": "embed", "input": "x", "dimensions": 8})
    assert upstream_body(request, "text-embedding-3-small") == {
        "input": "x",
        "dimensions": 8,
        "model": "text-embedding-3-small",
    }


def test_client_answer_shows_the_alias_and_the_billed_usage() -> None:
    answer = {"data": [{"embedding": [0.1], "index": 0}], "model": "up", "usage": {}}
    out = client_answer(answer, "embed", 7)
    assert out["model"] == "embed"
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert out["data"] == [{"object": "embedding", "index": 0, "embedding": [0.1]}]


def test_demo_vectors_are_deterministic_unit_vectors() -> None:
    a = demo_vector("hello", 32)
    assert a == demo_vector("hello", 32)
    assert a != demo_vector("hellp", 32)
    assert math.isclose(math.sqrt(sum(v * v for v in a)), 1.0, abs_tol=1e-4)


def test_demo_answer_base64_and_usage() -> None:
    out = demo_answer({"model": "m", "input": ["abcd", "efgh"], "encoding_format": "base64",
                       "dimensions": 4})  # fmt: skip
    assert out["usage"]["prompt_tokens"] == 2
    decoded = struct.unpack("<4f", base64.b64decode(out["data"][1]["embedding"]))
    assert [round(v, 4) for v in decoded] == [round(v, 4) for v in demo_vector("efgh", 4)]
