"""Embeddings (``POST /v1/projects/{ref}/embeddings``), pure: the request validated, its
input bound, the upstream body, and the answer as the client reads it.

The budget is input-only: the worst case is the input bound (UTF-8 bytes of each
string, which bound a byte-level BPE's tokens, plus a small allowance per item; a
token array's length), the output ceiling 0; the settle charges the reported
``prompt_tokens`` (or the bound when none came).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

from gateway.errors import ValidationFailed

FIELDS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
MAX_ITEMS = 2048  # OpenAI's limit of inputs per request
PER_ITEM_TOKENS = 2  # a model's start/end markers around each input
MAX_TOKEN_ID = 2**31 - 1


@dataclass(slots=True)
class EmbeddingsRequest:
    body: dict[str, Any]
    model: str | None
    items: int  # how many inputs
    input_bound: int


def _tokens(value: list[Any], where: str) -> int:
    for token in value:
        if type(token) is not int or not 0 <= token <= MAX_TOKEN_ID:
            raise ValidationFailed(f"{where} must hold token ids (integers >= 0)", where)
    return len(value)


def _text(value: str, where: str) -> int:
    if not value:
        raise ValidationFailed(f"{where} must not be empty", where)
    return len(value.encode("utf-8", "surrogatepass"))


def parse_request(body: Any) -> EmbeddingsRequest:
    """Validate an embeddings body (422 naming the field) and bound its input tokens."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", None)
    unknown = sorted(body.keys() - FIELDS)
    if unknown:
        raise ValidationFailed(
            f"unknown parameter {', '.join(repr(u) for u in unknown)}: embeddings take "
            f"{', '.join(sorted(FIELDS))}",
            unknown[0],
        )
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ValidationFailed("model must be a non-empty string", "model")
    value = body.get("input")
    if value is None:
        raise ValidationFailed("input is required", "input")
    if isinstance(value, str):
        bound, items = _text(value, "input"), 1
    elif isinstance(value, list) and value and all(type(v) is int for v in value):
        bound, items = _tokens(value, "input"), 1
    elif isinstance(value, list) and value:
        if len(value) > MAX_ITEMS:
            raise ValidationFailed(f"input may hold at most {MAX_ITEMS} items", "input")
        bound = 0
        for i, item in enumerate(value):
            where = f"input[{i}]"
            if isinstance(item, str):
                bound += _text(item, where)
            elif isinstance(item, list) and item:
                bound += _tokens(item, where)
            else:
                raise ValidationFailed(
                    f"{where} must be a string or a non-empty array of token ids", where
                )
        items = len(value)
    else:
        raise ValidationFailed("input must be a string, an array of strings, or token ids", "input")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or not 1 <= dimensions <= 65536):
        raise ValidationFailed("dimensions must be an integer between 1 and 65536", "dimensions")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise ValidationFailed('encoding_format must be "float" or "base64"', "encoding_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ValidationFailed("user must be a string", "user")
    return EmbeddingsRequest(
        body=body, model=model, items=items, input_bound=bound + PER_ITEM_TOKENS * items
    )


def upstream_body(request: EmbeddingsRequest, upstream_model: str) -> dict[str, Any]:
    """The body sent upstream: the client's (validated) fields, the route's model."""
    out = {k: v for k, v in request.body.items() if k != "model"}
    out["model"] = upstream_model
    return out


def check_answer(answer: Any) -> dict[str, Any]:
    """An upstream embeddings answer whose shape the client can read, or ValueError."""
    if isinstance(answer, dict):
        data = answer.get("data")
        if isinstance(data, list) and all(
            isinstance(d, dict) and isinstance(d.get("embedding"), list | str) for d in data
        ):
            return answer
    raise ValueError("not an embeddings answer")


def client_answer(answer: dict[str, Any], alias: str, input_tokens: int) -> dict[str, Any]:
    """The upstream answer as the client gets it: the alias as model, the billed usage."""
    data = [
        {"object": "embedding", "index": d.get("index", i), "embedding": d["embedding"]}
        for i, d in enumerate(answer["data"])
    ]
    return {
        "object": "list",
        "data": data,
        "model": alias,
        "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
    }


# ------------------------------------------------------------------- the demo's vectors

DEMO_DIMENSIONS = 16


def demo_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for a text: the same text, the same vector."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}\x00{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    vector = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def demo_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The demo provider's embeddings answer: a vector per input, honest toy usage (a
    token per 4 bytes of text, one per token id)."""
    value = body["input"]
    if isinstance(value, str) or (value and all(type(v) is int for v in value)):
        inputs: list[Any] = [value]
    else:
        inputs = list(value)
    dimensions = body.get("dimensions") or DEMO_DIMENSIONS
    data = []
    tokens = 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(str(t) for t in item)
        tokens += (len(text.encode()) + 3) // 4 if isinstance(item, str) else len(item)
        vector: list[float] | str = demo_vector(text, dimensions)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
