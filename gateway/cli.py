"""The ``gateway`` command: serve, check-config, keys new, token mint, usage."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml
from prometheus_client.multiprocess import mark_process_dead

from gateway import ports
from gateway.config import Config, ConfigError, load_config, parse_listen
from gateway.credentials import generate_key, mint_session_token

DEFAULT_CONFIG = os.environ.get("GATEWAY_CONFIG", "config")
# Set in workers of `serve --workers N`: the supervisor's pid (gateway.app reads it).
SUPERVISOR_PID_ENV = "GATEWAY_SUPERVISOR_PID"
# prometheus-client's multiprocess directory (the lower-case name is its old spelling).
METRICS_DIR_ENVS = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
# An API key id, as the config accepts it.
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
log = logging.getLogger("gateway.cli")


def _load(directory: str, as_log: bool = False) -> Config:
    try:
        return load_config(directory)
    except ConfigError as exc:
        if as_log:  # serving: stderr carries JSON lines only
            problems = [{"file": f, "path": p, "reason": r} for f, p, r in exc.problems]
            log.error("config invalid", extra={"problems": problems})
            raise SystemExit(2) from None
        print(f"config invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for file, path, reason in exc.problems:
            print(f"  {file}: {path or '-'}: {reason}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------ serve


def _worker_main(
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
    from gateway.embedded_redis import die_with_parent

    die_with_parent(signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before that took effect
        raise SystemExit(1)
    _run_worker(config_dir, host, port, redis_url, reuse_port=True, metrics_listen=metrics_listen)


def _run_worker(
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
    from aiohttp import web

    from gateway import server
    from gateway.app import begin_shutdown, create_app, reload_config
    from gateway.connections import ConnectionGuard, fd_bounded, serve
    from gateway.logs import setup_logging

    setup_logging(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    server.install()  # malformed requests: the gateway's JSON, not aiohttp's echo
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - non-Linux platforms
        pass
    config = _load(config_dir, as_log=True)
    address = None
    if metrics_listen is not None:
        # The command line's address (not written into the config: a reload compares
        # the config with the file) or the config's; "off" or "": none.
        value = metrics_listen or config.gateway.metrics.listen
        address = None if value in ("", "off") else parse_listen(value)
    app = create_app(config, redis_url, metrics_address=address)

    limits = config.gateway.limits

    async def on_startup(app: web.Application) -> None:
        _tune_gc()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_config, app)
        # Replaces aiohttp's own handlers: first fail /readyz, then stop.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(
                sig, begin_shutdown, app, limits.drain_seconds, limits.shutdown_grace_seconds
            )

    app.on_startup.append(on_startup)
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
        # A port taken since cmd_serve checked it (or a listener that failed at start):
        # one line, as there, not a traceback.
        log.error(f"cannot serve: {exc}")
        raise SystemExit(1) from None


def _tune_gc() -> None:
    """Once the app is built: move what lives for the whole process (modules, config,
    routes) out of the collector's sight, and collect young objects less often. A
    request allocates many short-lived containers, almost all freed by reference
    counting; with the default thresholds the cyclic collector took 8% of a worker's
    CPU under load (bench/, gc.callbacks), with these 2%."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def _listen_addresses(
    args: argparse.Namespace, config: Config, host: str, port: int
) -> list[tuple[str, int, str, str]]:
    """What ``serve`` will bind, for ``ports.holding``: the API port and, if served,
    the metrics listener's (a port 0 is any free one: nothing to check)."""
    out = [(host, port, "port", "serve on another one (--port, listen.port)")] if port else []
    value = args.metrics_listen or config.gateway.metrics.listen
    if value and value != "off":
        metrics_host, metrics_port = parse_listen(value)
        if metrics_port:
            hint = "move the metrics listener (--metrics-listen HOST:PORT or off, metrics.listen)"
            out.append((metrics_host, metrics_port, "metrics port", hint))
    return out


def _warn_missing_keys(config: Config) -> None:
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
    """SIGTERM / SIGINT before the gateway serves: unwind, so that ``cmd_serve``'s
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve: the embedded redis-server (unless a Redis URL is set), then one process
    or a supervisor of N workers. Nothing outlives it: a stop signal at any point ends
    with the redis-server stopped last; workers and the redis-server die with it even
    on SIGKILL (PR_SET_PDEATHSIG); the data directory is locked for its whole life."""
    from gateway.logs import setup_logging

    # First of all: from here on a stop signal unwinds through the finally below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_while_starting)
    signal.signal(signal.SIGHUP, lambda *_: None)  # a reload before serving: nothing to do
    setup_logging(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    _no_inherited_metrics_dir()
    config = _load(args.config, as_log=True)
    gw = config.gateway
    host = args.host or gw.listen.host
    port = args.port if args.port is not None else gw.listen.port
    if args.metrics_listen and args.metrics_listen != "off":
        try:
            parse_listen(args.metrics_listen)
        except ValueError as exc:
            log.error("invalid --metrics-listen", extra={"reason": str(exc)})
            return 2
    # Before anything is started or said to listen: a port in use is one line, exit 1.
    try:
        with ports.holding(_listen_addresses(args, config, host, port)):
            pass
    except ports.PortUnavailable as exc:
        log.error(str(exc))
        return 1
    port = port or ports.free_port(host)
    _warn_missing_keys(config)
    embedded = None
    redis_url = gw.redis.url
    status = 0
    try:
        if not redis_url:
            from gateway.embedded_redis import EmbeddedRedis

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
            "gateway listening", extra={"url": f"http://{host}:{port}", "workers": args.workers}
        )
        metrics_listen = args.metrics_listen or gw.metrics.listen
        if metrics_listen and metrics_listen != "off":
            log.info("metrics listening", extra={"url": f"http://{metrics_listen}/metrics"})
        if args.workers <= 1:
            _run_worker(
                args.config,
                host,
                port,
                redis_url,
                reuse_port=False,
                metrics_listen=args.metrics_listen or "",
            )
        else:
            status = _supervise(args, host, port, redis_url)
    finally:
        if embedded is not None:
            # Stopped last, once every request has settled; a second Ctrl-C must not
            # cut that short (the server dies with this process in any case).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            embedded.stop()
    return status


# A worker that exits this soon after it started failed to start (say, the port is
# taken): restarting it again and again would hide that. After this many such exits in
# a row, the supervisor stops and exits with an error.
FAST_EXIT_SECONDS = 10.0
FAST_EXITS_TO_GIVE_UP = 5
# While other workers still serve, a worker that keeps failing at start (say, the config
# on disk was broken since) is retried with a growing pause, up to this, instead: the
# gateway serves on with fewer workers rather than stopping.
RESTART_BACKOFF_MAX_SECONDS = 30.0


def _supervise(args: argparse.Namespace, host: str, port: int, redis_url: str) -> int:
    """Run N workers sharing the port (SO_REUSEPORT); restart any that dies, unless they
    keep dying at start (then stop them all: exit status 1). Workers die with the
    supervisor (``_worker_main``)."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    started_at: dict[int, float] = {}
    fast_exits = 0
    workers: list[multiprocessing.process.BaseProcess] = []
    supervisor = os.getpid()

    def start(slot: int) -> multiprocessing.process.BaseProcess:
        # Only the first slot's worker binds the metrics listener (a second bind would
        # fail; its scrape reads every worker's values); restarted, it binds it again.
        metrics = (args.metrics_listen or "") if slot == 0 else None
        p = ctx.Process(
            target=_worker_main,
            args=(supervisor, args.config, host, port, redis_url, metrics),
        )
        p.start()
        started_at[id(p)] = time.monotonic()
        return p

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in workers:
            if p.pid and p.is_alive():
                os.kill(p.pid, signum)

    # Before any worker starts: from here on a stop signal stops the workers started.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    # Metrics of all workers add up: each writes to this directory (prometheus-client
    # multiprocess mode) and the first slot's worker serves their sum (metrics.listen).
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # Workers ask the supervisor for a reload of all of them (POST /admin/reload).
    os.environ[SUPERVISOR_PID_ENV] = str(supervisor)
    status = 0
    try:
        for slot in range(args.workers):
            if stopping:
                break
            workers.append(start(slot))
        restart_at: dict[int, float] = {}  # slot -> when its dead worker is started again
        while not stopping:
            now = time.monotonic()
            for i, p in enumerate(workers):
                if stopping:
                    break
                if i in restart_at:
                    if now >= restart_at[i]:
                        del restart_at[i]
                        workers[i] = start(i)
                    continue
                if p.is_alive():
                    continue
                lived = now - started_at.pop(id(p), 0.0)
                fast_exits = fast_exits + 1 if lived < FAST_EXIT_SECONDS else 0
                if p.pid is not None:
                    mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
                serving = any(
                    w.is_alive() for j, w in enumerate(workers) if j != i and j not in restart_at
                )
                if fast_exits >= FAST_EXITS_TO_GIVE_UP and not serving:
                    log.error(
                        "workers keep exiting at start; stopping",
                        extra={"exitcode": p.exitcode, "exits": fast_exits},
                    )
                    stopping, status = True, 1
                    break
                pause = 0.0
                if serving and fast_exits:
                    pause = min(RESTART_BACKOFF_MAX_SECONDS, 0.5 * 2**fast_exits)
                log.error(
                    "worker exited; restarting",
                    extra={"pid": p.pid, "exitcode": p.exitcode, "in_seconds": pause},
                )
                restart_at[i] = now + pause
            time.sleep(0.5)
        # Again, to all: a worker whose start a signal interrupted was not in the list yet
        # (stopping twice is harmless).
        forward(signal.SIGTERM, None)
        for p in workers:
            p.join()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


# ------------------------------------------------------------------------ other commands


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    keys = sum(len(v) for v in config.keys_by_prefix.values())
    print(f"config OK: {len(config.projects)} project(s), {keys} API key(s)")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    bad = [s for s in scopes if s not in ("read", "write", "admin")]
    if bad or not scopes:
        print(f"invalid scopes: {', '.join(bad) or '(none)'}", file=sys.stderr)
        return 2
    if args.id is not None and not KEY_ID.fullmatch(args.id):
        print("invalid --id: 1 to 64 of A-Z a-z 0-9 _ -", file=sys.stderr)
        return 2
    key = generate_key()
    key_id = args.id or "key_" + key.prefix[-8:].lower()
    entry = {"id": key_id, "prefix": key.prefix, "sha256": key.sha256, "scopes": scopes}
    if args.save:
        # Written into the config: it must stay valid (a file that breaks it would make
        # the next reload, or start, fail) and nothing already there may be replaced.
        config = _load(args.config)
        if args.org not in config.gateway.orgs:
            print(f"unknown org {args.org!r}", file=sys.stderr)
            return 2
        if config.key(key_id) is not None:
            print(f"a key with id {key_id!r} exists already", file=sys.stderr)
            return 2
        path = Path(args.config) / "keys" / f"{key_id}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("x") as out:  # never over an existing file
                out.write(yaml.safe_dump({"orgs": {args.org: [entry]}}, sort_keys=False))
        except FileExistsError:
            print(f"{path} exists already", file=sys.stderr)
            return 2
        print(f"# saved to {path}", file=sys.stderr)
    else:
        print(f"# add under orgs.{args.org}.api_keys in gateway.yaml:", file=sys.stderr)
        print(yaml.safe_dump([entry], sort_keys=False), file=sys.stderr)
    print("# the key (shown once, store it now):", file=sys.stderr)
    print(key.secret)
    return 0


# The shortest HMAC secret each algorithm is safe with: its hash's output size.
SECRET_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
# Where ./scripts/serve keeps the secret it makes (beside the config directory).
SERVE_SECRET_FILE = Path(".gateway") / "session-secret"


def _no_session_secret(variable: str, config_dir: Path) -> str:
    """What ``token mint`` says in a shell without the secret: which variable, and
    where the secret of a gateway started with ./scripts/serve is."""
    kept = config_dir.resolve().parent / SERVE_SECRET_FILE
    if kept.is_file():
        where, path = str(kept), shlex.quote(str(kept))
    else:
        where = f"{SERVE_SECRET_FILE} of the checkout it runs in (beside config/)"
        path = str(SERVE_SECRET_FILE)
    return (
        f"{variable} is not set (session_tokens.secret_env): it must hold the secret the "
        "gateway verifies session tokens with.\n"
        f"./scripts/serve keeps the one it made in {where}: "
        f'export {variable}="$(cat {path})"'
    )


def cmd_token_mint(args: argparse.Namespace) -> int:
    config = _load(args.config)
    project = config.project(args.project)
    if project is None:
        print(f"unknown project {args.project!r}", file=sys.stderr)
        return 2
    if not project.file.enabled:
        print(f"project {args.project!r} is disabled: no token minted", file=sys.stderr)
        return 2
    sessions = config.gateway.session_tokens
    secret = config.secret(sessions.secret_env)
    if not secret:
        print(_no_session_secret(sessions.secret_env, Path(args.config)), file=sys.stderr)
        return 2
    # The same rules as the HTTP endpoint: a token that could never be accepted is an error.
    ttl = sessions.default_ttl_seconds if args.ttl is None else args.ttl
    if not 30 <= ttl <= sessions.max_ttl_seconds:
        print(f"--ttl must be between 30 and {sessions.max_ttl_seconds} seconds", file=sys.stderr)
        return 2
    scopes = args.scope.split()
    if not scopes or any(s not in ("read", "write", "admin") for s in scopes):
        print("--scope must be read, write or admin (space-separated)", file=sys.stderr)
        return 2
    if args.sub is not None and not 0 < len(args.sub) <= 256:
        print("--sub must be 1 to 256 characters", file=sys.stderr)
        return 2
    algorithm = sessions.algorithms[0]
    if len(secret.encode()) < SECRET_MIN_BYTES[algorithm]:
        print(
            f"warning: {sessions.secret_env} is {len(secret.encode())} bytes long; {algorithm} "
            f"wants at least {SECRET_MIN_BYTES[algorithm]} (RFC 7518, 3.2): a shorter secret "
            "can be guessed from any token it signed",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        # PyJWT's own warning of a short key, as two lines of its source: said above.
        warnings.simplefilter("ignore")
        token = mint_session_token(
            secret,
            org_id=project.org,
            project_id=project.id,
            project_slug=project.slug,
            scope=args.scope,
            ttl_seconds=ttl,
            sub=args.sub,
            algorithm=algorithm,
        )
    print(token)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from gateway.usage_cli import StoreUnreachable, read_usage, table

    config = _load(args.config)
    project = config.project(args.project)
    if project is None:
        print(f"unknown project {args.project!r}", file=sys.stderr)
        return 2
    try:
        data, where = read_usage(config, project, args.key, args.user)
    except StoreUnreachable as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(table(data, where))
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("karta-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout not installed
        return "unknown (package not installed)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="DIR",
        help="config directory (default: $GATEWAY_CONFIG, else config/)",
    )
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="karta: an LLM API gateway (authenticated, budgeted, streaming).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"gateway (karta-gateway) {_version()}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the gateway (embedded redis-server unless redis.url is set)",
    )
    serve.add_argument("--host", help="listen address (default: listen.host in the config)")
    serve.add_argument(
        "--port", type=int, help="listen port, 0 for any free one (default: listen.port)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serving processes sharing the port (default: 1)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="metrics listener host:port, or 'off' (default: metrics.listen in the config)",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config", parents=[common], help="validate the config and list every problem in it"
    )
    check.set_defaults(func=cmd_check_config)

    keys = sub.add_parser("keys", help="API keys (keys new)").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    new = keys.add_parser(
        "new", parents=[common], help="make a kt_live_ API key for an org (shown once)"
    )
    new.add_argument("--org", required=True, help="the org the key belongs to")
    new.add_argument(
        "--scopes",
        default="read,write",
        help="comma-separated, of read, write, admin (default: read,write)",
    )
    new.add_argument("--id", help="key id (default: derived from the prefix)")
    new.add_argument(
        "--save", action="store_true", help="write the entry to <config>/keys/<id>.yaml"
    )
    new.set_defaults(func=cmd_keys_new)

    usage = sub.add_parser(
        "usage",
        parents=[common],
        help="a project's budget usage, also while the gateway is stopped",
    )
    usage.add_argument("--project", required=True, help="project slug or id")
    usage.add_argument("--key", metavar="KEY_ID", help="also show this API key id's counters")
    usage.add_argument("--user", help="also show this end user's counters")
    usage.add_argument(
        "--json", action="store_true", help="print the report as JSON (costs in nano-USD)"
    )
    usage.set_defaults(func=cmd_usage)

    token = sub.add_parser("token", help="session tokens (token mint)").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    mint = token.add_parser(
        "mint",
        parents=[common],
        help="mint a session JWT for one project (needs the session secret)",
    )
    mint.add_argument("--project", required=True, help="project slug or id")
    mint.add_argument("--sub", help="end user id (its per-user budget applies)")
    mint.add_argument(
        "--ttl", type=int, metavar="SECONDS", help="lifetime (default from the config)"
    )
    mint.add_argument(
        "--scope", default="write", help="space-separated, of read, write, admin (default: write)"
    )
    mint.set_defaults(func=cmd_token_mint)
    # Every command, nested ones too, listed once, below (not the top level only).
    parser.epilog = "commands:\n" + "\n".join(
        f"  {name:<14}{text}" for name, text in _commands(parser)
    )
    sub._choices_actions.clear()
    sub.help = "one of the commands below; gateway COMMAND --help for its options"
    return parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, str]]:
    """Every runnable command, nested ones by their full name ("keys new"), with its
    one-line help: the top-level --help lists them all."""
    out: list[tuple[str, str]] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, child in action.choices.items():
            full = f"{prefix}{name}"
            nested = _commands(child, full + " ")
            out.extend(nested or [(full, helps.get(name, ""))])
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
