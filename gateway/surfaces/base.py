"""What a surface gives the chat pipeline: how its answers are written.

A surface (Responses, Anthropic Messages) translates its request into a chat body,
which the pipeline plans, holds, forwards and meters like any chat call; the
pipeline writes the answer through the surface: a unary chat completion becomes the
surface's object, a stream's chunks its events. Billing never depends on the surface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.config import ProviderConfig
from gateway.providers.base import AnswerTranslator, StreamTranslator
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


@dataclass(frozen=True, slots=True)
class NativeCall:
    """A same-format call (Messages to an Anthropic route, Responses to an OpenAI one):
    the body as the client sent it but for the model and the clamped ceiling, and how
    its stream, its answer and a failure after the first byte reach the client."""

    operation: Literal["messages", "responses"]
    body: dict[str, Any]
    stream: Callable[[str], StreamTranslator]  # its argument: the provider key
    answer: AnswerTranslator  # the upstream answer -> the client's object and its usage
    error: Callable[[str, str], bytes]  # (code, message) -> the error event
    headers: dict[str, str] = field(default_factory=dict)


class Surface(Protocol):
    """How one request's answer is written (the chat route writes its own)."""

    name: str  # the ledger's "surface"
    # What the upstream is asked: "chat" (the call's chat body, rewritten per route as
    # for chat completions) or "embeddings" (the body upstream_body() gives).
    operation: Literal["chat", "embeddings"]

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The upstream body of a non-chat operation, for a route's model."""

    def native(
        self, provider: ProviderConfig, upstream_model: str, ceiling: int
    ) -> NativeCall | None:
        """The call passed through natively to this provider (None: translated)."""

    def stream(self) -> SurfaceStream: ...

    def unary(self, completion: dict[str, Any], usage: Usage) -> dict[str, Any]: ...
