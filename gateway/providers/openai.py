"""OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, Groq, Together, ...).

The request is already OpenAI-shaped; this adapter sends it with the provider's
key (never the client's credential), maps failures before the first byte to the
gateway's statuses and parses the SSE stream into chunk dicts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from gateway.config import ProviderConfig
from gateway.errors import (
    ByokKeyRejected,
    GatewayError,
    UpstreamFailed,
    UpstreamRateLimited,
    ValidationFailed,
)
from gateway.providers.base import ChunkStream, UpstreamRequest, UpstreamStreamError
from gateway.providers.errortext import error_fields, provider_code, safe_param, with_code
from gateway.providers.http import HttpChunkStream, HttpProvider
from gateway.retryafter import retry_after_seconds
from gateway.sse import EventTooLarge, SSEEvent, SSEParser


def error_for_status(
    provider: str, status: int, body: bytes, headers: Any, secret: str = ""
) -> GatewayError:
    """The gateway's answer to a non-200 upstream status (before any byte reached the
    client): a fixed sentence per status, with the provider's code and the parameter
    it names when they pass the filter (gateway.providers.errortext); never its text."""
    error = error_fields(body)
    code = provider_code(error, secret)
    if status in (401, 403):
        return ByokKeyRejected(provider)
    if status == 429:
        # Never relayed as sent (it can carry anything): capped seconds, or our own 1.
        sent = headers.get("Retry-After") if headers is not None else None
        wait = retry_after_seconds(sent, time.time())
        limited = UpstreamRateLimited.detail(
            f"provider {provider} is rate limiting this project",
            {"Retry-After": str(1 if wait is None else wait)},
        )
        limited.upstream_retry_after = wait
        return limited
    if status in (400, 422):
        return ValidationFailed(
            with_code(f"provider {provider} rejected the request", code),
            safe_param(error.get("param"), secret),
        )
    return UpstreamFailed.detail(with_code(f"provider {provider} failed (HTTP {status})", code))


def _has_finish(batch: list[dict[str, Any]]) -> bool:
    # Plain loops: this runs on every read, and any() over a generator costs twice as much.
    for chunk in batch:
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                return True
    return False


def check_completion(completion: Any) -> dict[str, Any]:
    """A unary answer whose shape the handler can read, or ValueError."""
    if isinstance(completion, dict):
        choices = completion.get("choices")
        if isinstance(choices, list) and all(
            isinstance(c, dict) and isinstance(c.get("message") or {}, dict) for c in choices
        ):
            return completion
    raise ValueError("not a chat completion")


def _well_formed(chunk: dict[str, Any]) -> bool:
    """Whether the relay can read the chunk: choices a list of objects, each delta an
    object (any other field may hold anything: it is relayed, not read)."""
    choices = chunk.get("choices")
    if choices is None:
        return True
    if type(choices) is not list:
        return False
    for choice in choices:
        if type(choice) is not dict:
            return False
        delta = choice.get("delta")
        if delta is not None and type(delta) is not dict:
            return False
    return True


class OpenAIStream(HttpChunkStream):
    def __init__(
        self,
        provider: str,
        response: aiohttp.ClientResponse,
        secret: str = "",
        *,
        idle: float | None = None,
        first_byte_deadline: float | None = None,
    ) -> None:
        super().__init__(provider, response, idle=idle, first_byte_deadline=first_byte_deadline)
        self.secret = secret

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        parser = SSEParser()
        saw_finish = False
        async for piece in self.reads():
            try:
                events = parser.feed(piece) if piece is not None else parser.close()
            except EventTooLarge as exc:
                raise self._too_large(exc) from exc
            batch, done = self._decode_all(events)
            if batch:
                saw_finish = saw_finish or _has_finish(batch)
                yield batch
            if done:
                self.finished = True
                return
        if not saw_finish:
            raise UpstreamStreamError("upstream_error", "the provider stream ended early")
        self.finished = True

    def _too_large(self, exc: EventTooLarge) -> UpstreamStreamError:
        """The failure for an event over the SSE size cap, with the chunks before it."""
        failed = UpstreamStreamError("upstream_error", f"the provider sent {exc}")
        failed.pending, _ = self._decode_all(exc.events)
        return failed

    def _decode_all(self, events: list[SSEEvent]) -> tuple[list[dict[str, Any]], bool]:
        """The chunks of these events, and whether [DONE] came. A failure raises with
        the chunks decoded before it attached, so they are still relayed."""
        batch: list[dict[str, Any]] = []
        for event in events:
            try:
                chunk = self._decode(event.event, event.data)
            except UpstreamStreamError as exc:
                exc.pending = batch
                raise
            if chunk is None:
                return batch, True
            batch.append(chunk)
        return batch, False

    def _decode(self, event: str | None, data: bytes) -> dict[str, Any] | None:
        if data == b"[DONE]":
            return None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamStreamError("upstream_error", "the provider sent invalid JSON") from exc
        if type(chunk) is dict and event is None and "error" not in chunk and _well_formed(chunk):
            return chunk  # the common case, checked in one go
        if not isinstance(chunk, dict):
            raise UpstreamStreamError("upstream_error", "the provider sent an invalid chunk")
        # An "error" member that is null is no error (some compatible servers send one on
        # every chunk); any other value, or an error event, ends the stream.
        if event == "error" or chunk.get("error") is not None:
            raise UpstreamStreamError(
                "upstream_error",
                with_code(
                    "the provider reported an error", provider_code(chunk.get("error"), self.secret)
                ),
                declared=True,
            )
        if not _well_formed(chunk):
            raise UpstreamStreamError("upstream_error", "the provider sent an invalid chunk")
        return chunk


class OpenAIProvider(HttpProvider):
    def __init__(self, name: str, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(name, config, session)
        self.url = config.base_url.rstrip("/") + "/" + config.chat_path.lstrip("/")

    def _headers(self, request: UpstreamRequest) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if request.body.get("stream") else "application/json",
            "X-Request-Id": request.request_id,
            **self.config.headers,
            **request.extra_headers,
        }
        if request.api_key:
            scheme = self.config.auth_scheme
            headers[self.config.auth_header] = (
                f"{scheme} {request.api_key}" if scheme else request.api_key
            )
        return headers

    def _url(self, request: UpstreamRequest) -> str:
        if "{model}" not in self.url:
            return self.url
        return self.url.replace("{model}", quote(str(request.body.get("model", "")), safe=""))

    async def _send(
        self, request: UpstreamRequest, deadline: float | None
    ) -> aiohttp.ClientResponse:
        return await self.post(
            self._url(request),
            orjson.dumps(request.body),
            self._headers(request),
            deadline=deadline,
            api_key=request.api_key,
            error_for_status=error_for_status,
            params=self.config.query or None,
        )

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        response = await self._send(request, None)
        return await self.read_completion(
            response, request.api_key, error_for_status, check_completion
        )

    async def open_stream(self, request: UpstreamRequest) -> ChunkStream:
        deadline = self.stream_deadline()
        response = await self._send(request, deadline)
        return OpenAIStream(
            self.name,
            response,
            request.api_key,
            idle=self.config.timeouts.idle,
            first_byte_deadline=deadline,
        )
