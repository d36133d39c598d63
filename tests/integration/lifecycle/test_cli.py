"""The CLI's commands that write into the config or mint credentials: what they refuse
(exit 2, nothing written) and what they produce (a config that still loads, a token the
gateway accepts); and ``serve --workers N`` giving up on workers that cannot start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.credentials import verify_session_token
from gateway.serve.env import SUPERVISOR_PID_ENV
from tests.support.harness import SESSION_SECRET, Credentials, write_config
from tests.support.ports import free_port


@pytest.fixture
def creds(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Credentials:
    made = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", redis_url)
    for name, value in made.env.items():
        monkeypatch.setenv(name, value)
    return made


def _keys_new(creds: Credentials, *extra: str) -> int:
    return main(["keys", "new", "--config", str(creds.config_dir), "--save", *extra])


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("--org", "acme", "--id", "../gateway"), id="path-in-id"),
        pytest.param(("--org", "acme", "--id", "my key!"), id="bad-id"),
        pytest.param(("--org", "nosuchorg", "--id", "k_new"), id="unknown-org"),
        pytest.param(("--org", "acme", "--id", "key_main"), id="duplicate-id"),
    ],
)
def test_keys_new_refuses_what_would_break_the_config(
    creds: Credentials, extra: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.read_bytes() for p in creds.config_dir.rglob("*.yaml")}
    assert _keys_new(creds, *extra) == 2
    assert {p: p.read_bytes() for p in creds.config_dir.rglob("*.yaml")} == before
    assert capsys.readouterr().out == ""  # no key printed: none was made
    load_config(creds.config_dir, creds.env)  # still valid


def test_keys_new_never_overwrites_a_file(creds: Credentials) -> None:
    existing = creds.config_dir / "keys" / "k_taken.yaml"
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("orgs: {}\n")
    assert _keys_new(creds, "--org", "acme", "--id", "k_taken") == 2
    assert existing.read_text() == "orgs: {}\n"


def test_keys_new_saves_a_key_the_config_accepts(
    creds: Credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _keys_new(creds, "--org", "acme", "--id", "k_new", "--scopes", "read") == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    config = load_config(creds.config_dir, creds.env)
    record = config.key("k_new")
    assert record is not None
    assert record.org == "acme"
    assert secret.startswith(record.entry.prefix)


@pytest.mark.parametrize(
    "extra",
    [
        ("--ttl", "-600"),
        ("--ttl", "0"),
        ("--ttl", "999999"),
        ("--scope", ""),
        ("--scope", "root"),
        ("--sub", ""),
    ],
    ids=["negative-ttl", "zero-ttl", "ttl-over-max", "no-scope", "unknown-scope", "empty-sub"],
)
def test_token_mint_refuses_tokens_the_gateway_would_reject(
    creds: Credentials, extra: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "mint", "--config", str(creds.config_dir), "--project", "alpha", *extra]
    assert main(argv) == 2
    assert capsys.readouterr().out == ""


def test_token_mint_prints_a_token_the_gateway_accepts(
    creds: Credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "mint", "--config", str(creds.config_dir), "--project", "alpha"]
    assert main([*argv, "--sub", "user-3", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    claims = verify_session_token(token, SESSION_SECRET, ("HS256",))
    assert (claims.project_id, claims.sub, claims.scopes) == (
        "prj_alpha",
        "user-3",
        frozenset({"write"}),
    )


def test_serve_with_workers_stops_when_they_cannot_start(creds: Credentials) -> None:
    """Every worker dies at start: the supervisor used to restart them for ever; it now
    stops and exits 1. (A busy port no longer gets that far:
    tests/integration/lifecycle/test_cli_ports.py.) Here the config is valid for the
    supervisor and not for its workers: its wire_profile reads the variable only
    workers have (as a config that broke on disk after the supervisor read it would
    be)."""
    path = creds.config_dir / "gateway.yaml"
    path.write_text(path.read_text() + f"wire_profile: ${{{SUPERVISOR_PID_ENV}:-karta}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(creds.config_dir),
         "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "2",
         "--metrics-listen", "off"],
        capture_output=True,
        text=True,
        timeout=90,
        env=creds.env | {"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "workers keep exiting at start" in done.stderr
