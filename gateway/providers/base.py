"""What every provider adapter offers, and the failures it reports.

An adapter turns the gateway's OpenAI-shaped chat request into the provider's
request, and the provider's answer back into OpenAI shapes: a ``chat.completion``
dict and its :class:`~gateway.usage.Usage` for unary calls, ``chat.completion.chunk``
dicts and Usage events for streams (:data:`StreamEvent`). Failures before the first
byte raise a GatewayError with the documented status; failures after it raise
UpstreamStreamError, which the relay turns into an error event.

The translations are pure (:class:`StreamTranslator`, :data:`AnswerTranslator`);
the HTTP around them is gateway.providers.transport.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.config import Timeouts
from gateway.usage import Usage

Chunk = dict[str, Any]
"""A ``chat.completion.chunk`` (the relay re-stamps its id, object, model, created)."""


@dataclass(frozen=True, slots=True)
class Relayed:
    """A native (same-format) stream's bytes for the client, as they are, and what the
    meter learns from them: output deltas seen, whether the answer finished, the usage
    so far (``usage_final``: the finish's counts, else a running floor)."""

    data: bytes
    deltas: int = 0
    finished: bool = False
    usage: Usage | None = None
    usage_final: bool = False


StreamEvent = Chunk | Usage | tuple[Chunk, Usage] | Relayed
"""One item of a stream, in the provider's order:

- a chunk to relay, without any usage member;
- a Usage the provider reported on its own (OpenAI's ``choices: []`` chunk, Anthropic's
  final counts): nothing to relay;
- a chunk and the usage that came on it (vLLM's running count, Groq's ``x_groq``):
  counted after the chunk's finish_reason and before the chunk is relayed;
- a :class:`Relayed`: bytes of a same-format stream, relayed as they are.
"""

Completion = tuple[dict[str, Any], Usage | None]
"""A unary ``chat.completion`` (no usage member) and the usage it reported, if any."""

AnswerTranslator = Callable[[Any], Completion]
"""The provider's parsed 200 answer -> a Completion; ValueError: not an answer."""


@dataclass(slots=True)
class UpstreamRequest:
    """One call to one route: the body is OpenAI-shaped, already rewritten for the route."""

    body: dict[str, Any]
    api_key: str
    timeouts: Timeouts
    request_id: str
    extra_headers: dict[str, str] = field(default_factory=dict)
    # What is asked: a chat completion, embeddings (an OpenAI embeddings body), or a
    # same-format call passed through natively ("messages" to Anthropic, "responses" to
    # OpenAI), whose stream and answer the surface translates (native_stream, its
    # argument the provider key: no error code relayed may resemble it; native_answer).
    operation: Literal["chat", "embeddings", "messages", "responses", "count_tokens"] = "chat"
    native_stream: Callable[[str], StreamTranslator] | None = None
    native_answer: AnswerTranslator | None = None


class UpstreamStreamError(Exception):
    """The stream failed after its first byte: becomes the mid-stream error event."""

    def __init__(self, code: str, message: str, declared: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # True when the provider itself sent an error frame (as opposed to a cut or a
        # timeout, after which it may have generated tokens nobody saw).
        self.declared = declared
        # Events decoded from the same read before the failure: relayed before the error.
        self.pending: list[StreamEvent] = []


class StreamTranslator(Protocol):
    """A provider's stream bytes in, :data:`StreamEvent` lists out: pure, incremental.

    ``feed`` bytes as they arrive, ``close`` at the end of the body. After ``close``
    either ``done`` (the stream ended as it should) or ``error`` is set. ``done`` may
    come earlier (the provider's end marker): nothing after it is translated. A
    failure never costs the events before it: ``feed`` / ``close`` return those and
    keep the failure in ``error`` (an UpstreamStreamError, ``declared`` for the
    provider's own error frame); later calls raise it.
    """

    done: bool
    error: UpstreamStreamError | None

    def feed(self, data: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]: ...


class ChunkStream(ABC):
    """An open upstream stream: iterate batches of events, always ``aclose()``.

    A batch holds the events decoded from one upstream read, so the relay writes them
    to the client in one go (one socket write per read, not per event). A batch is
    never empty; events decoded before a failure come with it (``pending``).

    ``first_byte_deadline`` (event loop time) is when the first chunk must have come
    by: set when the request was sent, so that the wait for the response headers and
    the wait for the first chunk share one ``first_byte`` timeout. None: the relay
    counts ``first_byte`` from when the stream opened.
    """

    first_byte_deadline: float | None = None

    def __aiter__(self) -> AsyncIterator[list[StreamEvent]]:
        return self.batches()

    @abstractmethod
    def batches(self) -> AsyncIterator[list[StreamEvent]]: ...

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the upstream (closes the connection if the stream did not finish)."""


class Provider(ABC):
    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def complete(self, request: UpstreamRequest) -> Completion:
        """A unary chat completion, OpenAI-shaped, and its usage when reported."""

    @abstractmethod
    async def open_stream(self, request: UpstreamRequest) -> ChunkStream:
        """Send the request; return once the upstream answered 200 (raise otherwise)."""
