"""The ``gateway`` command: its arguments, and the commands (serve, check-config, keys
new|list|revoke|rotate, token mint, usage). Serving itself is gateway.serve's; the
API-managed keys are gateway.control's."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import yaml

from gateway.config import Config, ConfigError, load_config
from gateway.credentials import generate_key, mint_session_token

DEFAULT_CONFIG = os.environ.get("GATEWAY_CONFIG", "config")
# An API key id, as the config accepts it.
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _load(directory: str) -> Config:
    try:
        return load_config(directory)
    except ConfigError as exc:
        print(f"config invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for file, path, reason in exc.problems:
            print(f"  {file}: {path or '-'}: {reason}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve (gateway.serve.launch); imported here: the other commands need none of it."""
    from gateway.serve.launch import ServeOptions, serve

    return serve(
        ServeOptions(
            config_dir=args.config,
            host=args.host,
            port=args.port,
            workers=args.workers,
            metrics_listen=args.metrics_listen,
        )
    )


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


def _keys_command(args: argparse.Namespace) -> int:
    """``keys list|revoke|rotate``: the API-managed keys in the gateway's Redis."""
    from gateway.control import cli as keys_cli

    config = _load(args.config)
    if args.org not in config.gateway.orgs:
        print(f"unknown org {args.org!r}", file=sys.stderr)
        return 2
    try:
        if args.keys_command == "list":
            listed = keys_cli.list_keys(config, args.org)
            print(keys_cli.dumps(listed) if args.json else keys_cli.table(listed, args.org))
        elif args.keys_command == "revoke":
            key = keys_cli.revoke(config, args.org, args.key_id)
            if args.json:
                print(keys_cli.dumps(key))
            else:
                print(f"revoked {key['id']} ({key['prefix']}): every gateway stops it within 1 s")
        else:
            key = keys_cli.rotate(config, args.org, args.key_id, args.grace)
            previous = key["previous"]
            if args.json:
                print(keys_cli.dumps(key))
            else:
                print(
                    f"# rotated {previous['id']} into {key['id']} ({key['prefix']}); "
                    f"{previous['id']} keeps working until {keys_cli.when(previous['expires_at'])}",
                    file=sys.stderr,
                )
                print("# the new key (shown once, store it now):", file=sys.stderr)
                print(key["key"])
    except keys_cli.KeysFailed as exc:
        print(exc, file=sys.stderr)
        return exc.code
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

    keys = sub.add_parser("keys", help="API keys (new, list, revoke, rotate)").add_subparsers(
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
    listed = keys.add_parser(
        "list",
        parents=[common],
        help="an org's API keys: the config files' (read-only) and the API-managed ones",
    )
    revoke = keys.add_parser(
        "revoke", parents=[common], help="revoke an API-managed key (every gateway, within 1 s)"
    )
    rotate = keys.add_parser(
        "rotate",
        parents=[common],
        help="replace an API-managed key; the old one works for a grace period (shown once)",
    )
    for command in (listed, revoke, rotate):
        command.add_argument("--org", required=True, help="the org the keys belong to")
        command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(func=_keys_command)
    for command in (revoke, rotate):
        command.add_argument("key_id", metavar="KEY_ID", help="the key's id (ak_...)")
    rotate.add_argument(
        "--grace",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="how long the old key keeps working, 0 to 604800 (default: 3600)",
    )

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
