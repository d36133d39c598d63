"""What every provider adapter offers, and the failures it reports.

An adapter turns the gateway's OpenAI-shaped chat request into the provider's
request, and the provider's answer back into OpenAI shapes: a ``chat.completion``
dict for unary calls, ``chat.completion.chunk`` dicts for streams. Failures
before the first byte raise a GatewayError with the documented status; failures
after it raise UpstreamStreamError, which the relay turns into an error event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Timeouts


@dataclass(slots=True)
class UpstreamRequest:
    """One call to one route: the body is OpenAI-shaped, already rewritten for the route."""

    body: dict[str, Any]
    api_key: str
    timeouts: Timeouts
    request_id: str
    extra_headers: dict[str, str] = field(default_factory=dict)


class UpstreamStreamError(Exception):
    """The stream failed after its first byte: becomes the mid-stream error event."""

    def __init__(self, code: str, message: str, declared: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # True when the provider itself sent an error frame (as opposed to a cut or a
        # timeout, after which it may have generated tokens nobody saw).
        self.declared = declared
        # Chunks decoded from the same read before the failure: relayed before the error.
        self.pending: list[dict[str, Any]] = []


class ChunkStream(ABC):
    """An open upstream stream: iterate batches of chunk dicts, always ``aclose()``.

    A batch holds the chunks decoded from one upstream read, so the relay writes them
    to the client in one go (one socket write per read, not per event). A batch is
    never empty; chunks decoded before a failure are yielded before it is raised.

    ``first_byte_deadline`` (event loop time) is when the first chunk must have come
    by: set when the request was sent, so that the wait for the response headers and
    the wait for the first chunk share one ``first_byte`` timeout. None: the relay
    counts ``first_byte`` from when the stream opened.
    """

    first_byte_deadline: float | None = None

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        return self.batches()

    @abstractmethod
    def batches(self) -> AsyncIterator[list[dict[str, Any]]]: ...

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the upstream (closes the connection if the stream did not finish)."""


class Provider(ABC):
    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        """A unary chat completion, OpenAI-shaped, ``usage`` included when known."""

    @abstractmethod
    async def open_stream(self, request: UpstreamRequest) -> ChunkStream:
        """Send the request; return once the upstream answered 200 (raise otherwise)."""
