"""A built-in offline provider: deterministic text, streamed with small delays.

It lets the quickstart run with no provider key and no network. Its usage counts
are honest for its own toy tokenizer (one token per ~4 bytes of prompt, one per
streamed word), and it honours the output ceiling like a real provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.config import ProviderConfig
from gateway.providers.base import ChunkStream, Provider, UpstreamRequest

_REPLY = (
    "Hello from the karta demo provider. This answer is generated offline, word by word, "
    "so you can watch streaming, usage accounting and budgets work without a provider key. "
    "You said: "
)


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = 3
    for message in body["messages"]:
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        if isinstance(content, list):
            text = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += 4 + (len(text.encode()) + 3) // 4
    return total


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def _words(body: dict[str, Any]) -> tuple[list[str], str]:
    """The reply's words (one token each), cut at the ceiling, and the finish reason."""
    said = " ".join(_last_user_text(body).split()[:24]) or "nothing"
    words = [w + " " for w in (_REPLY + said).split()]
    words[-1] = words[-1].rstrip()
    ceiling = body.get("max_completion_tokens") or body.get("max_tokens") or len(words)
    if len(words) > ceiling:
        return words[:ceiling], "length"
    return words, "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class DemoStream(ChunkStream):
    def __init__(self, body: dict[str, Any], delay: float) -> None:
        self.body = body
        self.delay = delay

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        words, finish = _words(self.body)
        created = int(time.time())
        base = {
            "id": "demo",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "demo-1",
        }

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        yield [choice({"role": "assistant", "content": ""})]
        for word in words:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield [choice({"content": word})]
        usage = {**base, "choices": [], "usage": _usage(_prompt_tokens(self.body), len(words))}
        yield [choice({}, finish), usage]

    async def aclose(self) -> None:
        return None


class DemoProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name)
        self.delay = config.chunk_delay_ms / 1000

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        words, finish = _words(request.body)
        return {
            "id": "demo",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "demo-1",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words)},
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(_prompt_tokens(request.body), len(words)),
        }

    async def open_stream(self, request: UpstreamRequest) -> ChunkStream:
        return DemoStream(request.body, self.delay)
