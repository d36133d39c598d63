"""``gateway serve`` on a port another process holds (issue #12): exit status 1 and one
line saying which port is in use, before anything is started or said to listen; no
traceback, no worker restarts. Another real process holds the port."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.harness import Credentials, write_config
from tests.support.ports import free_port

# Listens on 127.0.0.1:<argv[1]> (SO_REUSEPORT when argv[2] is "1", as a gateway's
# workers do) until killed.
HOLDER = """
import socket, sys, time
s = socket.socket()
if sys.argv[2] == "1":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(300)
"""

Hold = Callable[..., int]


@pytest.fixture
def hold() -> Iterator[Hold]:
    """``hold(reuse_port=False)``: a free port, now listened on by another process."""
    procs: list[subprocess.Popen[str]] = []

    def factory(reuse_port: bool = False) -> int:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(port), "1" if reuse_port else "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        return port

    try:
        yield factory
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def creds(tmp_path: Path, redis_url: str) -> Credentials:
    return write_config(tmp_path / "config", "http://127.0.0.1:9/v1", redis_url)


def _serve(
    creds: Credentials, port: int, metrics: str, workers: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(creds.config_dir),
         "--port", str(port), "--metrics-listen", metrics, "--workers", str(workers)],
        capture_output=True,
        text=True,
        timeout=60,
        env=creds.env,
    )  # fmt: skip


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The exit status is 1 and stderr is one JSON log line: its message."""
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stderr
    record = json.loads(lines[0])
    assert record["level"] == "error"
    return str(record["msg"])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "reuse-port"])
def test_a_busy_api_port_is_one_line_and_exit_1(
    creds: Credentials, hold: Hold, workers: int, reuse_port: bool
) -> None:
    """reuse-port: the holder is like a gateway serving with workers; sharing its port
    (SO_REUSEPORT lets the bind succeed) would split the traffic between the two."""
    port = hold(reuse_port)
    done = _serve(creds, port, "off", workers)
    message = _one_line(done)
    assert message.startswith(f"port {port} on 127.0.0.1 is in use: "), message
    assert "--port" in message


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_metrics_port_is_one_line_and_exit_1(
    creds: Credentials, hold: Hold, workers: int
) -> None:
    metrics_port = hold()
    done = _serve(creds, free_port(), f"127.0.0.1:{metrics_port}", workers)
    message = _one_line(done)
    assert message.startswith(f"metrics port {metrics_port} on 127.0.0.1 is in use: "), message
    assert "--metrics-listen" in message


def test_the_api_and_metrics_on_one_port_is_refused_too(creds: Credentials) -> None:
    port = free_port()
    message = _one_line(_serve(creds, port, f"127.0.0.1:{port}", 1))
    assert message.startswith(f"metrics port {port} on 127.0.0.1 is in use: "), message
