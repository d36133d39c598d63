"""The API listener's run loop: aiohttp's runner, with every connection a guarded one
(gateway.http.connections), until a GracefulExit, as ``web.run_app`` does.

The hook is the runner's ``_make_server``: the aiohttp version is pinned by the lock
file and the process tests exercise it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from gateway.http.connections import ConnectionGuard, GuardedRequestHandler


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are GuardedRequestHandlers."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        guard = self._guard

        class _GuardedServer(Server):
            __slots__ = ()

            def __call__(self) -> RequestHandler:
                return GuardedRequestHandler(self, guard=guard, loop=self._loop, **self._kwargs)

        server.__class__ = _GuardedServer  # the same server, handing out guarded protocols
        return server


def serve(
    app: web.Application,
    guard: ConnectionGuard,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    shutdown_timeout: float,
) -> None:
    """Serve ``app`` until a GracefulExit (or KeyboardInterrupt), as ``web.run_app``
    does, with the guard on every connection of the listener."""

    async def main() -> None:
        runner = GuardedRunner(
            app,
            guard,
            handle_signals=True,
            access_log=None,
            # Cancel the handler when the client disconnects: the upstream is stopped
            # at once (the relay and the budget settlement handle the cancellation).
            handler_cancellation=True,
            shutdown_timeout=shutdown_timeout,
            # After an answer sent before its body was read (401, 408, 413): drain the
            # rest that long at most, then close (aiohttp's default is 10 s). Data
            # trickling in meanwhile also meets the header deadline.
            lingering_time=2.0,
            # An idle kept-alive connection: longer than a proxy's own idle timeout
            # (HAProxy's is 60 s here), so it never reuses one being closed.
            keepalive_timeout=75.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
            await site.start()
            await asyncio.Event().wait()  # until cancelled (a GracefulExit stops the loop)
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main_task = loop.create_task(main())
    try:
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main_task.done():
                main_task.cancel()
                loop.run_until_complete(asyncio.gather(main_task, return_exceptions=True))
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
