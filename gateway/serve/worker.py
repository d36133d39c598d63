"""One serving process: the app built from the config, on the guarded listener, until
a stop signal; as a worker of ``serve --workers N``, also dying with its supervisor."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from gateway.config import Config, ConfigError, load_config, parse_listen
from gateway.serve.env import LOG_LEVEL_ENV

log = logging.getLogger("gateway.worker")


def load_or_exit(config_dir: str) -> Config:
    """The config, or exit 2 with every problem logged (serving: stderr carries JSON
    lines only)."""
    try:
        return load_config(config_dir)
    except ConfigError as exc:
        problems = [{"file": f, "path": p, "reason": r} for f, p, r in exc.problems]
        log.error("config invalid", extra={"problems": problems})
        raise SystemExit(2) from None


def worker_main(
    supervisor: int,
    config_dir: str,
    host: str,
    port: int,
    redis_url: str,
    metrics_listen: str | None = None,
) -> None:
    """A worker of ``serve --workers N``: it dies with its supervisor, whatever kills
    the supervisor (SIGKILL, OOM killer), instead of serving on under pid 1 beside the
    next gateway (SO_REUSEPORT) with a budget store that is gone. SIGTERM: it stops as
    on any SIGTERM (requests in flight get the grace period)."""
    from gateway.serve.embedded_redis import die_with_parent

    die_with_parent(signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before that took effect
        raise SystemExit(1)
    run_worker(config_dir, host, port, redis_url, reuse_port=True, metrics_listen=metrics_listen)


def run_worker(
    config_dir: str,
    host: str,
    port: int,
    redis_url: str,
    reuse_port: bool,
    metrics_listen: str | None = None,
) -> None:
    """One serving process. ``metrics_listen`` (None: this process serves no metrics;
    else the ``metrics.listen`` value to use, "" for the config's) opens the metrics
    listener here."""
    # Imported here, not at the top: the supervisor imports this module for worker_main
    # and needs none of the application.
    from gateway.http import malformed
    from gateway.http.app import create_app
    from gateway.http.connections import ConnectionGuard, fd_bounded
    from gateway.http.runner import serve
    from gateway.logs import setup_logging
    from gateway.serve.lifecycle import on_startup

    setup_logging(os.environ.get(LOG_LEVEL_ENV, "INFO"))
    malformed.install()  # malformed requests: the gateway's JSON, not aiohttp's echo
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - non-Linux platforms
        pass
    config = load_or_exit(config_dir)
    address = None
    if metrics_listen is not None:
        # The command line's address (not written into the config: a reload compares
        # the config with the file) or the config's; "off" or "": none.
        value = metrics_listen or config.gateway.metrics.listen
        address = None if value in ("", "off") else parse_listen(value)
    app = create_app(config, redis_url, metrics_address=address)
    limits = config.gateway.limits
    app.on_startup.append(on_startup(limits))
    # Every connection: a header deadline, a cap per process and per client address.
    guard = ConnectionGuard(
        fd_bounded(limits.max_connections),
        limits.max_connections_per_address,
        limits.header_timeout_seconds,
    )
    try:
        serve(
            app,
            guard,
            host=host,
            port=port,
            reuse_port=reuse_port,
            # Longer than the grace period: streams are cut by begin_shutdown (with an
            # error event) before aiohttp would close their connections.
            shutdown_timeout=limits.shutdown_grace_seconds + 10,
        )
    except OSError as exc:
        # A port taken since the launch checked it (or a listener that failed at
        # start): one line, as there, not a traceback.
        log.error(f"cannot serve: {exc}")
        raise SystemExit(1) from None
