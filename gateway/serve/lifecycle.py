"""The life of a running gateway application: what it does once started (collector
tuning, signal handlers), on a reload (SIGHUP or POST /admin/reload), and on a stop
signal (drain, then shutdown with a grace period for open requests).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import Config, ConfigError, LimitsConfig, load_config
from gateway.context import STATE
from gateway.serve.env import SUPERVISOR_PID_ENV
from gateway.serve.resources import HTTP_SESSION, build_providers

log = logging.getLogger("gateway.lifecycle")


# ------------------------------------------------------------------------ startup


def on_startup(limits: LimitsConfig) -> Callable[[web.Application], Awaitable[None]]:
    """The app's startup hook in a serving process: the collector tuned, SIGHUP
    reloads, SIGTERM / SIGINT drain then stop."""

    async def startup(app: web.Application) -> None:
        tune_gc()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_config, app)
        # Replaces aiohttp's own handlers: first fail /readyz, then stop.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(
                sig, begin_shutdown, app, limits.drain_seconds, limits.shutdown_grace_seconds
            )

    return startup


def tune_gc() -> None:
    """Once the app is built: move what lives for the whole process (modules, config,
    routes) out of the collector's sight, and collect young objects less often. A
    request allocates many short-lived containers, almost all freed by reference
    counting; with the default thresholds the cyclic collector took 8% of a worker's
    CPU under load (bench/, gc.callbacks), with these 2%."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


# ------------------------------------------------------------------------ reload


def reload_config(app: web.Application) -> bool:
    """Re-read the config directory; keep serving the old one if the new one is invalid.

    In-flight requests keep the project objects they resolved, so they are unaffected.
    """
    state = app[STATE]
    try:
        new = load_reloadable(state.config)
    except ConfigError as exc:
        log.error(
            "config reload rejected, keeping the previous config", extra={"problems": str(exc)}
        )
        return False
    apply_config(app, new)
    return True


def load_reloadable(current: Config) -> Config:
    """The config directory as it is now, if valid and applicable without a restart
    (else ConfigError): where budgets live (the Redis and its key prefix) cannot change
    under running requests, nor can the listener or the body limit a running server
    was built with."""
    new = load_config(current.directory, current.env)
    old, gw = current.gateway, new.gateway
    restart_only = {
        "redis.url": (old.redis.url, gw.redis.url),
        "redis.key_prefix": (old.redis.key_prefix, gw.redis.key_prefix),
        "listen": (old.listen, gw.listen),
        "metrics": (old.metrics, gw.metrics),
        "limits.max_body_bytes": (old.limits.max_body_bytes, gw.limits.max_body_bytes),
    }
    path = str(current.directory / "gateway.yaml")
    problems = [
        (path, name, "changes only on a restart; the running gateway keeps its value")
        for name, (before, after) in restart_only.items()
        if before != after
    ]
    if problems:
        raise ConfigError(problems)
    return new


def reload_everywhere(app: web.Application, new: Config) -> bool:
    """Apply a config the operator asked for (POST /admin/reload): in this process, or,
    in a worker of several, by asking the supervisor to reload every worker (this one
    too); True in that case. A reload of this worker alone would leave the others on
    the old config (a revoked key still working there)."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor and supervisor == str(os.getppid()):
        os.kill(int(supervisor), signal.SIGHUP)  # each worker re-reads the directory
        return True
    apply_config(app, new)
    return False


def apply_config(app: web.Application, new: Config) -> None:
    """Serve ``new`` from now on: new providers, the store's timeouts, the config."""
    state = app[STATE]
    state.providers = build_providers(new, app[HTTP_SESSION])
    # The reservation ttl follows the providers' timeouts (checked together at load):
    # keeping the old one with longer new timeouts would let holds expire mid-request.
    state.store.timeout_s = new.gateway.redis.timeout_ms / 1000
    state.store.reservation_ttl_s = new.gateway.limits.reservation_ttl_seconds
    state.config = new
    log.info("config reloaded", extra={"projects": len(new.projects)})


# ------------------------------------------------------------------------ drain, shutdown


def begin_shutdown(app: web.Application, drain_seconds: float, grace_seconds: float) -> None:
    """SIGTERM: /readyz fails at once; after ``drain_seconds`` the server stops accepting
    and open requests get ``grace_seconds`` to finish; streams still open then end with
    an error event, unary calls still waiting on their provider with a 503; every
    reservation is settled before the process exits (aiohttp's own shutdown timeout
    must be longer than the grace period)."""
    state = app[STATE]
    if not state.ready:
        return
    state.ready = False
    log.info(
        "shutting down", extra={"drain_seconds": drain_seconds, "grace_seconds": grace_seconds}
    )
    loop = asyncio.get_running_loop()

    def stop() -> None:
        raise web.GracefulExit()

    def cut_handlers() -> None:
        state.grace_over = True
        for task in list(state.handlers):
            task.cancel()  # a stream writes the gateway_shutdown error event; a unary 503

    loop.call_later(drain_seconds, stop)
    loop.call_later(drain_seconds + grace_seconds, cut_handlers)
