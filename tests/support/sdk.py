"""Reading what the official SDKs return: the chunks of a stream and their text."""

from __future__ import annotations

from typing import Any


async def collect(stream: Any, into: list[Any] | None = None) -> list[Any]:
    """Iterate an SDK stream to its end, keeping every chunk in ``into`` (also when
    the stream raises midway: pass a list to read what came before)."""
    chunks = into if into is not None else []
    async for chunk in stream:
        chunks.append(chunk)
    return chunks


def text_of(chunks: list[Any]) -> str:
    """The text of an OpenAI SDK stream's chat chunks (the first choice's)."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
