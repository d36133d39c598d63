"""What the HTTP provider adapters share: one pooled session, the send with its
first-byte timeout and its mapping of failures before the first byte, reading a
unary answer (a body lost after a 200 is billed, never retried), and closing a
stream (back to the pool when finished, dropped when not: that stops generation).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from gateway.config import ProviderConfig
from gateway.errors import GatewayError, UpstreamFailed, UpstreamTimeout
from gateway.providers.base import ChunkStream, Provider, UpstreamStreamError

# (provider name, status, body, headers, provider key) -> the gateway's answer
ErrorMapper = Callable[[str, int, bytes, Any, str], GatewayError]


class HttpProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(name)
        self.config = config
        self.session = session
        timeouts = config.timeouts
        self.client_timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.idle
        )

    async def post(
        self,
        url: str,
        data: bytes,
        headers: dict[str, str],
        *,
        first_byte: float,
        api_key: str,
        error_for_status: ErrorMapper,
        params: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST and wait for a 200; anything else raises the gateway's error."""
        try:
            sent = self.session.post(
                url, params=params, data=data, headers=headers, timeout=self.client_timeout
            )
            if first_byte < (self.client_timeout.total or math.inf):
                async with asyncio.timeout(first_byte):
                    response = await sent
            else:  # unary: the session's total timeout is already this bound
                response = await sent
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout.detail(f"provider {self.name} timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailed.detail(f"provider {self.name} is unreachable") from exc
        if response.status != 200:
            try:
                async with asyncio.timeout(first_byte):
                    body = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""
            finally:
                response.release()
            raise error_for_status(self.name, response.status, body, response.headers, api_key)
        return response

    async def read_answer(self, response: aiohttp.ClientResponse) -> bytes:
        """The body of a 200. Lost midway, the provider still did (and bills) the work."""
        try:
            return await response.read()
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


# After a stream's last event: how long, and how much, to read for the body's end.
DRAIN_SECONDS = 0.25
DRAIN_MAX_BYTES = 64 * 1024


class HttpChunkStream(ChunkStream):
    """A stream read from an aiohttp response; ``finished`` once read to its end."""

    def __init__(self, provider: str, response: aiohttp.ClientResponse) -> None:
        self.provider = provider
        self.response = response
        self.finished = False

    async def reads(self) -> AsyncIterator[bytes | None]:
        """The body as it arrives, then None at its end. Transport failures (a cut, the
        idle timeout) become the mid-stream error every adapter reports."""
        try:
            async for piece in self.response.content.iter_any():
                yield piece
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamStreamError("upstream_timeout", "the provider stopped sending") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamStreamError("upstream_error", "the provider connection failed") from exc
        yield None

    async def aclose(self) -> None:
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
