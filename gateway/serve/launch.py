"""What ``gateway serve`` does around serving: stop signals handled from the first
instant, the config loaded, the ports checked, unset provider keys warned about, the
embedded redis-server started, then one worker or a supervisor of N, and the
redis-server stopped last. Nothing outlives it: workers and the redis-server die with
it even on SIGKILL (PR_SET_PDEATHSIG); the data directory is locked for its whole life.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from gateway.config import Config, parse_listen
from gateway.serve import ports
from gateway.serve.env import LOG_LEVEL_ENV, METRICS_DIR_ENVS
from gateway.serve.worker import load_or_exit, run_worker

log = logging.getLogger("gateway.launch")


@dataclass(frozen=True)
class ServeOptions:
    """``gateway serve``'s command line; None: the config's value."""

    config_dir: str
    host: str | None = None
    port: int | None = None  # 0: any free port
    workers: int = 1
    metrics_listen: str | None = None  # HOST:PORT or "off"


def serve(options: ServeOptions) -> int:
    """Serve until stopped; the exit status (1: a port in use, the embedded store not
    started, workers failing at start; 2: an invalid config or --metrics-listen)."""
    from gateway.logs import setup_logging

    # First of all: from here on a stop signal unwinds through the finally below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_while_starting)
    signal.signal(signal.SIGHUP, lambda *_: None)  # a reload before serving: nothing to do
    setup_logging(os.environ.get(LOG_LEVEL_ENV, "INFO"))
    _no_inherited_metrics_dir()
    config = load_or_exit(options.config_dir)
    gw = config.gateway
    host = options.host or gw.listen.host
    port = options.port if options.port is not None else gw.listen.port
    if options.metrics_listen and options.metrics_listen != "off":
        try:
            parse_listen(options.metrics_listen)
        except ValueError as exc:
            log.error("invalid --metrics-listen", extra={"reason": str(exc)})
            return 2
    # Before anything is started or said to listen: a port in use is one line, exit 1.
    try:
        with ports.holding(_listen_addresses(options.metrics_listen, config, host, port)):
            pass
    except ports.PortUnavailable as exc:
        log.error(str(exc))
        return 1
    port = port or ports.free_port(host)
    warn_missing_keys(config)
    embedded = None
    redis_url = gw.redis.url
    status = 0
    try:
        if not redis_url:
            from gateway.serve.embedded_redis import EmbeddedRedis

            embedded = EmbeddedRedis(gw.redis.data_dir)
            try:
                redis_url = embedded.start()
            except RuntimeError as exc:
                log.error("embedded redis-server not started", extra={"reason": str(exc)})
                return 1
            log.info(
                "embedded redis-server started",
                extra={"redis": "unix socket", "data_dir": gw.redis.data_dir},
            )
        log.info(
            "gateway listening",
            extra={"url": f"http://{host}:{port}", "workers": options.workers},
        )
        metrics_listen = options.metrics_listen or gw.metrics.listen
        if metrics_listen and metrics_listen != "off":
            log.info("metrics listening", extra={"url": f"http://{metrics_listen}/metrics"})
        if options.workers <= 1:
            run_worker(
                options.config_dir,
                host,
                port,
                redis_url,
                reuse_port=False,
                metrics_listen=options.metrics_listen or "",
            )
        else:
            from gateway.serve.supervisor import supervise

            status = supervise(
                options.workers,
                options.config_dir,
                host,
                port,
                redis_url,
                options.metrics_listen or "",
            )
    finally:
        if embedded is not None:
            # Stopped last, once every request has settled; a second Ctrl-C must not
            # cut that short (the server dies with this process in any case).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            embedded.stop()
    return status


def _listen_addresses(
    metrics_listen: str | None, config: Config, host: str, port: int
) -> list[tuple[str, int, str, str]]:
    """What ``serve`` will bind, for ``ports.holding``: the API port and, if served,
    the metrics listener's (a port 0 is any free one: nothing to check)."""
    out = [(host, port, "port", "serve on another one (--port, listen.port)")] if port else []
    value = metrics_listen or config.gateway.metrics.listen
    if value and value != "off":
        metrics_host, metrics_port = parse_listen(value)
        if metrics_port:
            hint = "move the metrics listener (--metrics-listen HOST:PORT or off, metrics.listen)"
            out.append((metrics_host, metrics_port, "metrics port", hint))
    return out


def warn_missing_keys(config: Config) -> None:
    """Once at start (not once per worker): every provider key variable that is unset
    or empty. Requests routed there answer 503 provider_key_not_configured; the
    environment is read at start, so setting it takes a restart."""
    after = "answer 503 until the gateway restarts with it set"
    for name, spec in config.gateway.providers.items():
        variable = spec.api_key_env
        if variable and not config.secret(variable):
            log.warning(
                f"provider {name} has no key configured ({variable} is not set): "
                f"requests routed to it {after}",
                extra={"provider": name, "variable": variable},
            )
    for project in config.projects.values():
        for name, variable in project.file.provider_keys.items():
            if not config.secret(variable):
                log.warning(
                    f"project {project.slug} has no key configured for provider {name} "
                    f"({variable} is not set): its requests routed to {name} {after}",
                    extra={"provider": name, "variable": variable, "project": project.slug},
                )


def _stop_while_starting(signum: int, _frame: object) -> None:
    """SIGTERM / SIGINT before the gateway serves: unwind, so that ``serve``'s
    ``finally`` stops the embedded redis-server (the default action would leave it
    running). Workers and the app replace this handler once they are up."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # one is enough: let the unwinding finish
    log.info("stop signal while starting; stopping", extra={"signal": signal.Signals(signum).name})
    raise SystemExit(0)


def _no_inherited_metrics_dir() -> None:
    """A ``PROMETHEUS_MULTIPROC_DIR`` from the environment is not used: a single process
    needs no multiprocess mode, and that directory outlives the process (the next run
    would start from the last one's counters, or add in another process's). With
    ``--workers N`` the supervisor makes its own directory and removes it at exit."""
    inherited = [name for name in METRICS_DIR_ENVS if name in os.environ]
    if not inherited:
        return
    for name in inherited:
        del os.environ[name]
    # prometheus-client chose its value class when it was imported: choose again.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    log.info("PROMETHEUS_MULTIPROC_DIR ignored", extra={"variables": inherited})
