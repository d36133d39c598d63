"""A built-in offline provider: deterministic answers, streamed with small delays.

It lets the quickstart run with no provider key and no network. What it answers is
decided in gateway.providers.demo.answers (text, JSON for ``response_format``, a tool
call for ``tools``, ``n`` choices, ``stop``, the output ceiling); this module gives it
OpenAI's shapes: a ``chat.completion``, or ``chat.completion.chunk`` deltas the way
OpenAI streams them. Its usage is honest for its own toy tokenizer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from itertools import zip_longest
from typing import Any

from gateway.config import ProviderConfig
from gateway.providers.base import ChunkStream, Completion, Provider, StreamEvent, UpstreamRequest
from gateway.providers.demo.answers import Choice, answer, prompt_tokens
from gateway.surfaces.embeddings import demo_answer
from gateway.usage import Usage

MODEL = "demo-1"


def _usage(body: dict[str, Any], choices: list[Choice]) -> Usage:
    return Usage(
        input_tokens=prompt_tokens(body),
        output_tokens=sum(c.completion_tokens for c in choices),
    )


def message(choice: Choice) -> dict[str, Any]:
    """The unary answer's ``message`` of one choice."""
    if choice.tool is None:
        return {"role": "assistant", "content": choice.text}
    call = {
        "id": choice.tool.id,
        "type": "function",
        "function": {"name": choice.tool.name, "arguments": choice.text},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def deltas(choice: Choice) -> list[dict[str, Any]]:
    """The stream deltas of one choice, before its finish: the role, then one per piece.
    A tool call's first delta carries its id, type and name; the later ones carry
    argument fragments (what the OpenAI SDKs assemble)."""
    if choice.tool is None:
        return [{"role": "assistant", "content": ""}, *({"content": p} for p in choice.pieces)]
    head = {
        "index": 0,
        "id": choice.tool.id,
        "type": "function",
        "function": {"name": choice.tool.name, "arguments": ""},
    }
    fragments = (
        {"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in choice.pieces
    )
    return [{"role": "assistant", "content": None, "tool_calls": [head]}, *fragments]


class DemoStream(ChunkStream):
    def __init__(self, body: dict[str, Any], choices: list[Choice], delay: float) -> None:
        self.body = body
        self.choices = choices
        self.delay = delay

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        choices = self.choices
        base = {
            "id": "demo",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL,
        }

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

        # Each choice: its deltas, then its finish; with n > 1 they interleave, one
        # batch per step (as n choices come from a real provider).
        steps = [
            [chunk(c.index, d) for d in deltas(c)] + [chunk(c.index, {}, c.finish_reason)]
            for c in choices
        ]
        for i, batch in enumerate(zip_longest(*steps)):
            if i and self.delay:
                await asyncio.sleep(self.delay)
            yield [c for c in batch if c is not None]
        yield [_usage(self.body, choices)]  # last, as OpenAI sends its usage chunk

    async def aclose(self) -> None:
        return None


class DemoProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name)
        self.delay = config.chunk_delay_ms / 1000

    async def complete(self, request: UpstreamRequest) -> Completion:
        if request.operation == "embeddings":
            embedded = demo_answer(request.body)
            usage = embedded.pop("usage")
            return embedded, Usage(input_tokens=usage["prompt_tokens"])
        choices = answer(request.body)
        completion = {
            "id": "demo",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [
                {"index": c.index, "message": message(c), "finish_reason": c.finish_reason}
                for c in choices
            ],
        }
        return completion, _usage(request.body, choices)

    async def open_stream(self, request: UpstreamRequest) -> ChunkStream:
        # Answered here: a request it refuses (ValidationFailed) fails before any byte.
        return DemoStream(request.body, answer(request.body), self.delay)
