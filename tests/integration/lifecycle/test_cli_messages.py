"""What a new user reads from the ``gateway`` command (issue #12): its version, help on
every option, every command listed by the top-level help, ``token mint`` in a shell
without the session secret, and no Python warning of any library on any command's
output. Each command runs as a process of its own, every warning enabled."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.support.harness import Credentials, write_config
from tests.support.process import gateway_cli


@pytest.fixture
def creds(tmp_path: Path, redis_url: str) -> Credentials:
    # A checkout's layout: config/ beside .gateway/ (where ./scripts/serve keeps things).
    return write_config(tmp_path / "checkout" / "config", "http://127.0.0.1:9/v1", redis_url)


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command line, by its command path, and whether it runs."""
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.extend(_parsers(child, (*path, name)))
    return out


def _leaves() -> list[str]:
    """The runnable commands: "serve", ..., "keys new", "token mint"."""
    out = []
    for path, parser in _parsers(build_parser()):
        if path and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            out.append(" ".join(path))
    return out


def _no_warning(done: subprocess.CompletedProcess[str]) -> None:
    for stream in (done.stdout, done.stderr):
        assert "Warning" not in stream, stream
        assert "warnings.warn" not in stream, stream


def test_version_is_the_package_version(creds: Credentials) -> None:
    done = gateway_cli(creds.env, "--version")
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == f"gateway (karta-gateway) {importlib.metadata.version('karta-gateway')}"
    )


def test_every_option_of_every_command_has_help() -> None:
    undocumented = [
        f"gateway {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert undocumented == []


def test_the_top_level_help_lists_every_command_with_a_line(creds: Credentials) -> None:
    leaves = _leaves()
    assert {"serve", "check-config", "keys new", "token mint", "usage"} <= set(leaves)
    done = gateway_cli(creds.env, "--help")
    assert done.returncode == 0, done.stderr
    for command in leaves:
        assert re.search(rf"^  {re.escape(command)}  +\S", done.stdout, re.M), (
            command,
            done.stdout,
        )


def test_token_mint_without_the_secret_says_which_variable_and_where_it_is(
    creds: Credentials,
) -> None:
    env = {k: v for k, v in creds.env.items() if k != "GATEWAY_SESSION_SECRET"}
    argv = ("token", "mint", "--config", str(creds.config_dir), "--project", "alpha")
    done = gateway_cli(env, *argv)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("GATEWAY_SESSION_SECRET is not set")
    assert ".gateway/session-secret" in done.stderr  # where ./scripts/serve keeps it

    # Once ./scripts/serve made it (beside the config directory): its path, to copy.
    kept = creds.config_dir.parent / ".gateway" / "session-secret"
    kept.parent.mkdir()
    kept.write_text("s" * 43 + "\n")
    done = gateway_cli(env, *argv)
    assert done.returncode == 2
    assert f'export GATEWAY_SESSION_SECRET="$(cat {shlex.quote(str(kept))})"' in done.stderr
    _no_warning(done)


def test_token_mint_with_a_short_secret_says_so_in_one_line_of_its_own(
    creds: Credentials,
) -> None:
    env = {**creds.env, "GATEWAY_SESSION_SECRET": "short"}
    done = gateway_cli(
        env, "token", "mint", "--config", str(creds.config_dir), "--project", "alpha"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2  # the JWT
    assert done.stderr.splitlines() == [
        "warning: GATEWAY_SESSION_SECRET is 5 bytes long; HS256 wants at least 32 "
        "(RFC 7518, 3.2): a shorter secret can be guessed from any token it signed"
    ]
    _no_warning(done)  # not PyJWT's InsecureKeyLengthWarning


def test_no_command_prints_a_library_warning(creds: Credentials) -> None:
    config = ("--config", str(creds.config_dir))
    runs = [
        ("--help",),
        ("--version",),
        *((*leaf.split(), "--help") for leaf in _leaves()),
        ("check-config", *config),
        ("keys", "new", *config, "--org", "acme"),
        ("token", "mint", *config, "--project", "alpha"),
        ("usage", *config, "--project", "alpha"),
        ("usage", *config, "--project", "alpha", "--json"),
    ]
    for argv in runs:
        done = gateway_cli(creds.env, *argv)
        assert done.returncode == 0, (argv, done.stderr)
        _no_warning(done)
