"""What a surface gives the chat pipeline: how its answers are written.

A surface (Responses, Anthropic Messages) translates its request into a chat body,
which the pipeline plans, holds, forwards and meters like any chat call; the
pipeline writes the answer through the surface: a unary chat completion becomes the
surface's object, a stream's chunks its events. Billing never depends on the surface.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from gateway.usage import Usage


class SurfaceStream(Protocol):
    """One streamed answer in the surface's events (a new one per attempt)."""

    def start(self) -> bytes:
        """The events before any chunk (written with the first one)."""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """A chat.completion.chunk (re-stamped by the relay) as the surface's events."""

    def finish(self, usage: Usage) -> bytes:
        """The end of a stream that completed, with what it is billed."""

    def fail(self, code: str, message: str) -> bytes:
        """The end of a stream that failed after its first byte."""


class Surface(Protocol):
    """How one request's answer is written (the chat route writes its own)."""

    name: str  # the ledger's "surface"
    # What the upstream is asked: "chat" (the call's chat body, rewritten per route as
    # for chat completions) or "embeddings" (the body upstream_body() gives).
    operation: Literal["chat", "embeddings"]

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The upstream body of a non-chat operation, for a route's model."""

    def stream(self) -> SurfaceStream: ...

    def unary(self, completion: dict[str, Any], usage: Usage) -> dict[str, Any]: ...
