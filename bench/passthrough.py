"""A bare aiohttp reverse proxy: the baseline a gateway is compared with.

One pooled ClientSession; the request body is forwarded as is to UPSTREAM + path;
the response is relayed as bytes (stream pieces written as they arrive).
    .venv/bin/python bench/passthrough.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    url = request.app[UPSTREAM] + request.rel_url.path_qs
    async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as up:
        ctype = up.headers.get("Content-Type", "application/octet-stream")
        if not ctype.startswith("text/event-stream"):
            return web.Response(
                status=up.status, body=await up.read(), headers={"Content-Type": ctype}
            )
        response = web.StreamResponse(
            status=up.status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        async for piece in up.content.iter_any():
            await response.write(piece)
        await response.write_eof()
        return response


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    )
    yield
    await app[SESSION].close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare aiohttp reverse proxy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
