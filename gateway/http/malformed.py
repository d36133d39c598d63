"""The HTTP server's own answers: what aiohttp sends when a request never reaches the
application (it could not be parsed) or fails outside it.

aiohttp answers a malformed request (a bad header line, request line or chunk size,
a header over 8190 bytes, more than 128 headers) with a plain-text page quoting the
offending bytes, an API key among them, and logs it at error level; its 417 for an
unknown ``Expect`` header, raised before any middleware, quotes the header too. The
gateway's handler answers the documented JSON instead (``{"detail": ...}``, a fixed
text per kind of error, never a byte of the request, with an ``X-Request-Id``), closes
the connection, and logs one warning naming only the kind of error.

aiohttp builds its connection handler in ``web.Server`` with no setting to choose
the class: :func:`install` makes ``GatewayRequestHandler`` the one every server of
the process builds (the gateway's serve command calls it, before the app starts).
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web, web_server
from aiohttp.http_exceptions import BadStatusLine, LineTooLong

from gateway.errors import BadRequest, GatewayError
from gateway.ids import new_id

log = logging.getLogger("gateway.server")


def _detail(status: int, exc: BaseException | None) -> str:
    """A fixed description of the failure: nothing of the request is quoted."""
    if status == HTTPStatus.BAD_REQUEST:
        if isinstance(exc, LineTooLong):
            return "malformed HTTP request: a request line or header over the size limit"
        if isinstance(exc, BadStatusLine):  # BadHttpMethod included
            return "malformed HTTP request: invalid request line"
        return "malformed HTTP request"
    if status == HTTPStatus.EXPECTATION_FAILED:
        return "unsupported Expect header (only 100-continue is)"
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return "timed out"
    if status < 500:
        try:
            return HTTPStatus(status).phrase
        except ValueError:
            return "bad request"
    return "internal error"


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with the gateway's answers to what fails before
    or outside the application."""

    __slots__ = ()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Write ``resp``; an aiohttp HTTP error raised before the application's
        middlewares could render it (an unknown ``Expect``, whose page quotes the
        header) is answered as the gateway's JSON instead."""
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            resp = self._answer(request, resp.status, resp)
        return await super().finish_response(request, resp, start_time)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON answer to a request that failed outside the application; closes the
        connection (after a parse error the rest of the stream means nothing).

        ``message`` (aiohttp's text, quoting the request's bytes) is never used."""
        return self._answer(request, status, exc)

    def _answer(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> web.StreamResponse:
        """The gateway's JSON for ``status``, logged without anything of the request."""
        request_id = new_id()
        fields = {
            "request_id": request_id,
            "status": status,
            "error_type": type(exc).__name__ if exc is not None else None,
            "remote": request.remote,
        }
        if status < 500:
            # The client's fault, and common on a public port (scanners, TLS spoken to
            # plain HTTP): a warning, with the kind of error only.
            log.warning("malformed request", extra=fields)
        else:
            log.error("request failed outside the application", extra=fields)
        if request.writer.output_size > 0:
            # Part of an answer is out: another cannot follow (aiohttp drops the
            # connection on this).
            raise ConnectionError("a response was already sent") from None
        kind = BadRequest if status < 500 else GatewayError
        error = kind.detail(_detail(status, exc))
        error.status = status  # 400 (417), or the 500 / 504 aiohttp reports
        response = error.response()
        response.headers["X-Request-Id"] = request_id
        response.force_close()
        return response


def install() -> None:
    """Make every aiohttp server of this process use :class:`GatewayRequestHandler`."""
    setattr(web_server, "RequestHandler", GatewayRequestHandler)  # noqa: B010
