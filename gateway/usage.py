"""Token usage, pure: the worst-case bound reserved before a request, the usage a
provider reports after it, and its cost in integer nano-USD (always rounded up).

The input bound relies on byte-level BPE tokenizers (OpenAI's and most open
models'): every token covers at least one UTF-8 byte, so the byte count of the
text plus a per-message allowance for the chat template's special tokens is an
upper bound. Images get a configured per-image bound instead of their bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import PriceConfig

PER_MESSAGE_TOKENS = 8  # role markers and separators of chat templates (OpenAI: 3-4)
PER_REQUEST_TOKENS = 16  # priming of the assistant reply, tool-definition wrappers
MILLION = 1_000_000
_COUNTED_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


@dataclass(slots=True)
class Usage:
    """Tokens of one request, by type; ``estimated`` when the provider sent none."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # cache reads, included in input_tokens
    reasoning_tokens: int = 0  # included in output_tokens
    cache_creation_input_tokens: int = 0  # cache writes, included in input_tokens
    estimated: bool = False
    # Of the cache writes, those kept an hour (Anthropic's 1-hour TTL, priced apart).
    cache_creation_1h_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _text_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _json_bytes(value: Any) -> int:
    return len(orjson.dumps(value))


class UnboundedInput(ValueError):
    """A part whose tokens nothing bounds (a file, without the model's context window);
    ``param`` names it, as validation errors do."""

    def __init__(self, param: str) -> None:
        super().__init__(f"{param}: no bound for its tokens")
        self.param = param


def _content_bound(content: Any, image_bound: int, file_bound: int | None, where: str) -> int:
    if isinstance(content, str):
        return _text_bytes(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            total += _text_bytes(part["text"])
        elif kind == "image_url":
            total += image_bound
        elif kind == "file":
            # A document's pages become text and page images upstream: neither its bytes
            # (a compressed PDF, or a reference to an uploaded file) nor anything else
            # bounds that, but the model's context window.
            if file_bound is None:
                raise UnboundedInput(f"{where}.content[{j}]")
            total += file_bound
        else:  # audio, refusals: their serialized size bounds them
            total += _json_bytes(part)
    return total


def input_token_bound(
    body: dict[str, Any],
    image_bound: int,
    context_tokens: int | None = None,
    extras: Iterable[str] = (),
) -> int:
    """An upper bound of the prompt tokens a validated chat request can consume.

    ``image_bound``: tokens one image may cost; ``context_tokens``: the model's context
    window, which caps the bound, and is a file part's bound (without it a file part
    raises UnboundedInput); ``extras``: the operator-allowed parameters that may be
    forwarded, each counted by its JSON bytes (what a server could put in the prompt)."""
    total = PER_REQUEST_TOKENS
    for i, message in enumerate(body["messages"]):
        total += PER_MESSAGE_TOKENS + _text_bytes(message["role"])
        total += _content_bound(
            message.get("content"), image_bound, context_tokens, f"messages[{i}]"
        )
        if message.get("name"):
            total += _text_bytes(message["name"])
        if message.get("tool_calls"):
            total += _json_bytes(message["tool_calls"])
        if message.get("tool_call_id"):
            total += _text_bytes(message["tool_call_id"])
        for key, value in message.items():
            # Anything else the model reads as prompt (function_call, refusal, future fields).
            if key not in _COUNTED_MESSAGE_KEYS and value is not None:
                total += _text_bytes(value) if isinstance(value, str) else _json_bytes(value)
    for extra in ("tools", "functions", "response_format", "tool_choice"):
        value = body.get(extra)
        if value is not None and not isinstance(value, str):
            total += _json_bytes(value)
    for name in extras:
        if name in body:
            total += _text_bytes(name) + _json_bytes(body[name])
    return total if context_tokens is None else min(total, context_tokens)


def output_ceiling(requested: int | None, project_ceiling: int, n: int = 1) -> int:
    """Max output tokens per choice: the request's, clamped to the project's ceiling."""
    per_choice = project_ceiling if requested is None else min(requested, project_ceiling)
    return per_choice * max(n, 1)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cost_nano(usage: Usage, price: PriceConfig | None) -> int:
    """Cost in nano-USD, rounded up; prices are nano-USD per million tokens."""
    if price is None:
        return 0
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_creation_input_tokens, usage.input_tokens - cached)
    written_1h = min(usage.cache_creation_1h_input_tokens, written)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    write_1h_price = write_price if price.cache_write_1h is None else price.cache_write_1h
    numerator = (
        (usage.input_tokens - cached - written) * price.input
        + cached * cached_price
        + (written - written_1h) * write_price
        + written_1h * write_1h_price
        + usage.output_tokens * price.output
    )
    return _ceil_div(numerator, MILLION)


def dearest_input_price(price: PriceConfig) -> int:
    """The most one input token can cost (a cache write costs more than a plain one)."""
    return max(
        price.input, price.cache_write or 0, price.cache_write_1h or 0, price.cached_input or 0
    )


def worst_cost_nano(input_bound: int, output_ceiling: int, price: PriceConfig | None) -> int:
    """Cost bound of a request: every input token at the dearest input price (a cache
    write costs more than a plain input token), every output token at the output price."""
    if price is None:
        return 0
    dearest = dearest_input_price(price)
    return _ceil_div(input_bound * dearest + output_ceiling * price.output, MILLION)


# The most tokens a provider may report for one count. No request comes near it, and a
# larger count (orjson parses up to 2**64 - 1) could overflow the budget store's int64
# counters: such a report is no usage, so the gateway bills its estimate (never below
# the truth) instead.
MAX_REPORTED_TOKENS = 10**12


def _token_count(value: Any) -> int | None:
    """A count of tokens: an integer (not a bool) in [0, MAX_REPORTED_TOKENS], else None."""
    if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


def from_openai(usage: Any) -> Usage | None:
    """Usage from an OpenAI ``usage`` object (unary body or stream chunk).

    None unless both counts are integers in [0, MAX_REPORTED_TOKENS]: a usage the
    upstream got wrong is no usage (the caller then estimates, never below the truth),
    and a negative count could otherwise take tokens off a counter. Details of the
    wrong shape count 0.
    """
    if not isinstance(usage, dict):
        return None
    prompt = _token_count(usage.get("prompt_tokens"))
    completion = _token_count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    if not isinstance(prompt_details, dict):
        prompt_details = {}
    if not isinstance(completion_details, dict):
        completion_details = {}
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cached_input_tokens=_token_count(prompt_details.get("cached_tokens")) or 0,
        reasoning_tokens=_token_count(completion_details.get("reasoning_tokens")) or 0,
        # Not OpenAI's: the Anthropic adapter reports cache writes here.
        cache_creation_input_tokens=_token_count(prompt_details.get("cache_creation_tokens")) or 0,
    )


def estimate(input_bound: int, output_ceiling: int, output_floor: int = 0) -> Usage:
    """Usage to bill when no final usage was reported: never below the truth.

    Input at its upper bound; output at the reserved ceiling (what was seen says
    nothing of what was generated unseen, reasoning tokens above all), or at
    ``output_floor`` when the upstream provably produced more (it ignored the clamp).
    """
    return Usage(
        input_tokens=input_bound, output_tokens=max(output_ceiling, output_floor), estimated=True
    )


def at_least(estimated: Usage, reported: Usage) -> Usage:
    """An estimate never below a usage the upstream reported along the way (a partial,
    cumulative count): each count is the higher of the two. The report's cache and
    reasoning details are kept: the prompt's were final once it was read."""
    return Usage(
        input_tokens=max(estimated.input_tokens, reported.input_tokens),
        output_tokens=max(estimated.output_tokens, reported.output_tokens),
        cached_input_tokens=reported.cached_input_tokens,
        reasoning_tokens=reported.reasoning_tokens,
        cache_creation_input_tokens=reported.cache_creation_input_tokens,
        estimated=True,
        cache_creation_1h_input_tokens=reported.cache_creation_1h_input_tokens,
    )


def generated_bytes(message: Any) -> int:
    """UTF-8 bytes of what the model generated in one answer message: every field
    (content, tool calls, refusal, reasoning, non-standard ones) but the role, strings
    by their bytes, anything else by its JSON (the stream relay counts deltas alike)."""
    if not isinstance(message, dict):
        return 0
    total = 0
    for field, value in message.items():
        if field == "role" or not value:
            continue
        total += _text_bytes(value) if isinstance(value, str) else _json_bytes(value)
    return total
