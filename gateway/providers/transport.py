"""The transport every HTTP provider adapter shares: one pooled session, the send and
its mapping of failures before the first byte (:meth:`HttpProvider.error_for_status`,
which adapters override), reading a unary answer (a body lost or unreadable after a
200 is billed, never retried), and reading and closing a stream (back to the pool
when finished, dropped when not: that stops generation).

An adapter supplies the rest, pure: its URL, headers and payload, the translator of
its answer and of its stream (gateway.providers.base); :class:`HttpProvider` sends,
reads and runs them.

Timeouts (the provider's ``timeouts``): ``connect`` bounds the connection (aiohttp's
``sock_connect``) and ``total`` the whole call (aiohttp's ``total``). aiohttp's
``sock_read`` is not used: it would also bound the wait for the response headers,
which a unary answer sends only once the whole answer is ready. Instead a stream's
headers and its first chunk share one ``first_byte`` deadline from the send (see
:meth:`HttpProvider.stream_deadline`), and ``idle`` bounds each wait for more body
after the first byte (unary and stream alike).

What happened to a failed request decides its bill: a failure before the request was
sent (refused, DNS, a connect timeout) reached nobody, and may be retried unbilled; a
unary request sent and timed out, or a 200 whose answer is lost, too large or
unreadable, may have been (was) done by the provider: billed at the worst case
(``billable``), never retried. Bodies are read within bounds (MAX_ANSWER_BYTES,
MAX_ERROR_BODY_BYTES), as are stream events (gateway.sse.MAX_EVENT_BYTES).

Redirects are never followed: a 3xx is a 502 (UpstreamFailed), so the request and
the provider key go to the configured URL and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.config import ProviderConfig
from gateway.errors import (
    ByokKeyRejected,
    GatewayError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    ValidationFailed,
)
from gateway.idle import IdleWatchdog
from gateway.providers.base import (
    AnswerTranslator,
    ChunkStream,
    Completion,
    Provider,
    StreamEvent,
    StreamTranslator,
    UpstreamRequest,
    UpstreamStreamError,
)
from gateway.providers.errortext import error_fields, provider_code, safe_param, with_code
from gateway.retryafter import retry_after_seconds

# The largest unary answer read: a completion is its output tokens (a few bytes each,
# at most the clamped ceiling) plus logprobs and tool calls; 32 MiB is far above any
# real one, and bounds what one call can make the gateway hold.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
# The most read of an error body (or of a 200 that is not the answer asked for): only
# its error message is used, and the mapped answer does not depend on the rest.
MAX_ERROR_BODY_BYTES = 64 * 1024

# Failures that prove the request never left the gateway: nothing reached the provider.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)

# An error object's ``code`` or ``type`` (OpenAI's, then Anthropic's) -> the status it
# comes with, for an error a provider (or a proxy in front of it) sends with a 200:
# mapped as that status is. Listed: the statuses whose answer is not the default 502
# (retried, unbilled): a rejected key, a rate limit, a rejected request; and OpenAI's
# unknown model, whose type alone would read as a rejected request.
_ERROR_STATUSES = {
    "model_not_found": 404,
    "invalid_api_key": 401,
    "authentication_error": 401,
    "permission_error": 403,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "rate_limit_error": 429,
    "invalid_request_error": 400,
    "request_too_large": 413,
}


def status_error(
    provider: str, status: int, body: bytes, headers: Any, secret: str = ""
) -> GatewayError:
    """The gateway's answer to a non-200 upstream status (before any byte reached the
    client): a fixed sentence per status, with the provider's code and the parameter
    it names when they pass the filter (gateway.providers.errortext); never its text.
    OpenAI's error body, which most providers (Anthropic included) share."""
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


def error_object(answer: Any) -> Any:
    """The error a provider sent instead of an answer (OpenAI ``{"error": {...}}``,
    Anthropic ``{"type": "error", "error": {...}}``), or None."""
    if isinstance(answer, dict) and "choices" not in answer and "content" not in answer:
        error = answer.get("error")
        if isinstance(error, dict) or (isinstance(error, str) and error):
            return error
    return None


def _error_status(error: Any) -> int | None:
    """The status an error object goes with, when its code or type says (else None)."""
    if not isinstance(error, dict):
        return None
    for field in ("code", "type"):
        status = _ERROR_STATUSES.get(str(error.get(field)))
        if status is not None:
            return status
    return None


async def read_body(
    response: aiohttp.ClientResponse, limit: int, idle: float | None = None
) -> bytes | None:
    """The whole body, or None when it is over ``limit`` bytes (then the connection is
    closed: the rest is never read). Reads at most ``limit + 1`` bytes; each wait for
    more is bounded by ``idle`` seconds (TimeoutError)."""
    length = response.content_length
    if length is not None and length > limit:
        response.close()
        return None
    content = response.content
    loop = asyncio.get_running_loop()
    pieces: list[bytes] = []
    size = 0
    async with asyncio.timeout(None) as timeout:
        while True:
            if idle is not None:
                timeout.reschedule(loop.time() + idle)
            piece = await content.read(limit + 1 - size)
            if not piece:
                return b"".join(pieces)
            size += len(piece)
            if size > limit:
                response.close()
                return None
            pieces.append(piece)


class HttpProvider(Provider):
    """A provider over HTTP: the adapter gives the translations (the abstract methods)
    and may override :meth:`error_for_status`; this class sends and reads."""

    # Query parameters sent with every call (None: none).
    params: dict[str, str] | None = None

    def __init__(self, name: str, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(name)
        self.config = config
        self.session = session
        timeouts = config.timeouts
        # No sock_read: see the module's docstring.
        self.client_timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect
        )

    @abstractmethod
    def url(self, request: UpstreamRequest) -> str:
        """Where the call goes."""

    @abstractmethod
    def headers(self, request: UpstreamRequest, stream: bool) -> dict[str, str]:
        """The call's headers, the provider key among them."""

    @abstractmethod
    def payload(self, request: UpstreamRequest, stream: bool) -> dict[str, Any]:
        """The provider's request body (ValidationFailed: one it cannot take)."""

    @abstractmethod
    def answer_translator(self, request: UpstreamRequest) -> AnswerTranslator:
        """How this call's unary answer becomes a Completion."""

    @abstractmethod
    def stream_translator(self, request: UpstreamRequest) -> StreamTranslator:
        """A fresh translator of this call's stream."""

    def error_for_status(
        self, status: int, body: bytes, headers: Any, api_key: str
    ) -> GatewayError:
        """The gateway's answer to a non-200 status (``body``: at most
        MAX_ERROR_BODY_BYTES of the error body; ``api_key``: never in the answer)."""
        return status_error(self.name, status, body, headers, api_key)

    async def complete(self, request: UpstreamRequest) -> Completion:
        translate = request.native_answer or self.answer_translator(request)
        response = await self.send(request, False, None)
        return await self.read_completion(response, request.api_key, translate)

    async def open_stream(self, request: UpstreamRequest) -> ChunkStream:
        deadline = self.stream_deadline()
        response = await self.send(request, True, deadline)
        native = request.native_stream
        return HttpChunkStream(
            self.name,
            response,
            native(request.api_key) if native is not None else self.stream_translator(request),
            idle=self.config.timeouts.idle,
            first_byte_deadline=deadline,
        )

    def stream_deadline(self) -> float:
        """The first-byte deadline of a stream sent now (event loop time): its headers
        and its first chunk must both have come by then."""
        return asyncio.get_running_loop().time() + self.config.timeouts.first_byte

    async def send(
        self, request: UpstreamRequest, stream: bool, deadline: float | None
    ) -> aiohttp.ClientResponse:
        """The adapter's request, posted (see :meth:`post`)."""
        data = orjson.dumps(self.payload(request, stream))
        return await self.post(
            self.url(request),
            data,
            self.headers(request, stream),
            deadline=deadline,
            api_key=request.api_key,
            params=self.params,
        )

    async def post(
        self,
        url: str,
        data: bytes,
        headers: dict[str, str],
        *,
        deadline: float | None,
        api_key: str,
        params: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST and wait for a 200; anything else raises the gateway's error.

        ``deadline`` (event loop time) is a stream's first-byte deadline: it bounds the
        wait for the headers, and the 200 must be an event stream. A unary call has none:
        the provider answers once the whole answer is ready, so only ``total`` bounds the
        wait, and a timeout then is billed (the provider may have done the work).
        """
        try:
            # Never follow a redirect: it would re-send the prompt and the provider key
            # (Authorization survives a same-host redirect, x-api-key / api-key any) to
            # wherever the Location points.
            sent = self.session.post(
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=self.client_timeout,
                allow_redirects=False,
            )
            async with asyncio.timeout_at(deadline):
                response = await sent
        except _NOT_SENT as exc:
            # Nothing reached the provider: another attempt or route may serve it, unbilled.
            not_sent: GatewayError
            if isinstance(exc, aiohttp.ServerTimeoutError):
                not_sent = UpstreamTimeout.detail(f"provider {self.name} timed out (connect)")
            else:
                not_sent = UpstreamFailed.detail(f"provider {self.name} is unreachable")
            raise not_sent from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            timed_out = UpstreamTimeout.detail(f"provider {self.name} timed out")
            if deadline is None:
                # Sent, and no answer within total: the provider may have done it all.
                timed_out.billable, timed_out.retryable = True, False
            raise timed_out from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailed.detail(f"provider {self.name} is unreachable") from exc
        if 300 <= response.status < 400:
            # A redirect (or any 3xx) is no answer: a 502, its Location never used or
            # relayed, its body never read.
            response.close()
            raise UpstreamFailed.detail(
                f"provider {self.name} answered a redirect (HTTP {response.status}), "
                "which the gateway does not follow"
            )
        if response.status != 200:
            body = await self._small_body(response, deadline)
            raise self.error_for_status(response.status, body, response.headers, api_key)
        if deadline is not None and response.content_type != "text/event-stream":
            # A 200 that is no stream (a JSON error, a proxy's HTML page): the provider
            # generated nothing, and another attempt or route may do better.
            body = await self._small_body(response, deadline)
            what = f"{response.content_type}, not an event stream"
            raise self.not_an_answer(body, response.headers, api_key, what)
        return response

    async def _small_body(self, response: aiohttp.ClientResponse, deadline: float | None) -> bytes:
        """An error body (or a 200's that is not the answer), at most MAX_ERROR_BODY_BYTES
        of it, in time (b"" otherwise), then the connection goes back or is closed."""
        try:
            async with asyncio.timeout_at(deadline):
                return await read_body(response, MAX_ERROR_BODY_BYTES) or b""
        except (TimeoutError, aiohttp.ClientError):
            return b""
        finally:
            response.release()

    def not_an_answer(self, body: bytes, headers: Any, api_key: str, what: str) -> GatewayError:
        """The gateway's answer to a 200 that is not the answer asked for (``what`` it
        is instead): an error object the provider sent is mapped as the
        status it goes with would be (a rejected key, a rate limit, a rejected request);
        anything else is a 502 that another attempt may fix. Nothing is billed: nothing
        was generated. The provider's text is never relayed (:meth:`error_for_status`
        answers a fixed sentence, with the provider's code when it is safe)."""
        try:
            error = error_object(orjson.loads(body))
        except orjson.JSONDecodeError:
            error = None
        status = _error_status(error)
        if status is not None:
            return self.error_for_status(status, body, headers, api_key)
        return UpstreamFailed.detail(f"provider {self.name} answered 200 with {what}")

    async def read_completion(
        self,
        response: aiohttp.ClientResponse,
        api_key: str,
        convert: AnswerTranslator,
    ) -> Completion:
        """A 200's answer, made an OpenAI completion by ``convert`` (ValueError: not a
        readable answer). After a 200 the provider did the work: an answer that cannot
        be read is billed (``unreadable``); an error object sent with the 200 is mapped
        as its status would be (``not_an_answer``)."""
        body = await self.read_answer(response)
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise self.unreadable("sent invalid JSON") from exc
        if error_object(answer) is not None:
            raise self.not_an_answer(body, response.headers, api_key, "an error")
        try:
            return convert(answer)
        except ValueError as exc:
            raise self.unreadable("sent an invalid answer") from exc

    def unreadable(self, problem: str) -> UpstreamFailed:
        """A 200 whose answer cannot be used (``problem``: "sent invalid JSON"): a 502,
        billed at the worst case and not retried, since the provider did the work."""
        failed = UpstreamFailed.detail(f"provider {self.name} {problem}")
        failed.billable, failed.retryable = True, False
        return failed

    async def read_answer(self, response: aiohttp.ClientResponse) -> bytes:
        """The body of a 200. Lost midway, stalled for ``idle``, or over MAX_ANSWER_BYTES,
        the provider still did (and bills) the work."""
        try:
            body = await read_body(response, MAX_ANSWER_BYTES, self.config.timeouts.idle)
        except (TimeoutError, aiohttp.ClientError) as exc:
            lost: GatewayError
            if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
                lost = UpstreamTimeout.detail(f"provider {self.name} timed out")
            else:
                lost = UpstreamFailed.detail(f"provider {self.name} connection failed")
            lost.billable, lost.retryable = True, False
            raise lost from exc
        finally:
            response.release()
        if body is None:
            raise self.unreadable(f"sent an answer over {MAX_ANSWER_BYTES} bytes")
        return body


# After a stream's last event: how long, and how much, to read for the body's end.
DRAIN_SECONDS = 0.25
DRAIN_MAX_BYTES = 64 * 1024


class HttpChunkStream(ChunkStream):
    """A stream read from an aiohttp response and decoded by the adapter's translator;
    ``finished`` once read to its end.

    ``first_byte_deadline`` is the one its send set (see ChunkStream); ``idle`` bounds
    every wait for more body after the first byte.
    """

    def __init__(
        self,
        provider: str,
        response: aiohttp.ClientResponse,
        translator: StreamTranslator,
        *,
        idle: float | None = None,
        first_byte_deadline: float | None = None,
    ) -> None:
        self.provider = provider
        self.response = response
        self.translator = translator
        self.finished = False
        self.idle = idle
        self.first_byte_deadline = first_byte_deadline
        self._watch: IdleWatchdog | None = None

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        translator = self.translator
        async for piece in self.reads():
            events = translator.feed(piece) if piece is not None else translator.close()
            failed = translator.error
            if failed is not None:
                failed.pending = events  # relayed before the error event
                raise failed
            if events:
                yield events
            if translator.done:
                self.finished = True
                return

    async def reads(self) -> AsyncIterator[bytes | None]:
        """The body as it arrives, then None at its end. Transport failures (a cut, the
        idle timeout) become the mid-stream error every adapter reports. The first read
        is the first byte (the relay bounds it by the first-byte deadline); each later
        one waits ``idle`` seconds at most."""
        content = self.response.content
        watch = None
        if self.idle is not None:
            # Wakes the pending read with the error, as aiohttp's own sock_read does (no
            # task is cancelled: nothing else the relay awaits can be hit).
            watch = IdleWatchdog(
                self.idle,
                lambda: content.set_exception(TimeoutError("the provider stopped sending")),
            )
        self._watch = watch
        try:
            piece = await content.readany()
            while piece:
                yield piece
                if watch is not None:
                    watch.begin()
                piece = await content.readany()
                if watch is not None:
                    watch.end()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamStreamError("upstream_timeout", "the provider stopped sending") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamStreamError("upstream_error", "the provider connection failed") from exc
        finally:
            if watch is not None:
                watch.stop()
        yield None

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.stop()  # a stream closed unread (its reads() never resumed)
        drained = False
        try:
            drained = self.finished and await self._drained()
        finally:
            if drained:
                self.response.release()  # back to the pool for keep-alive
            else:
                self.response.close()  # drop the connection: stops generation upstream

    async def _drained(self) -> bool:
        """Whether the body reached its end. A stream is finished at its last event,
        and providers often end the body a packet later (the chunked encoding's last
        chunk): read that, briefly and boundedly, so the connection can be reused. A
        connection dropped here costs the next call a new one (a TLS handshake)."""
        content = self.response.content
        left = DRAIN_MAX_BYTES
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while not content.at_eof():
                    left -= len(await content.readany())
                    if left < 0:
                        return False
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        return True
