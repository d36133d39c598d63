"""Run ``gateway serve`` as a real subprocess, for process-level tests.

The gateway is started the way an operator starts it (``python -m gateway.cli serve``)
in its own session, so teardown can kill the whole process group (supervisor,
workers, multiprocessing's resource tracker). Its stderr goes to a file the tests
read: the JSON log lines. Every wait here is async: the fake upstream runs in the
test's event loop and must keep answering while a test waits on the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.support.harness import Credentials
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    """One ``gateway serve`` process (and its workers), logging to ``log_path``."""

    def __init__(self, creds: Credentials, log_path: Path, workers: int = 1) -> None:
        self.creds = creds
        self.log_path = log_path
        self.workers = workers
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def metrics_url(self) -> str:
        """The metrics listener's /metrics (not on the API port)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- lifecycle ---------------------------------------------------------------------

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process (returns at once; ``start`` also waits until it answers)."""
        args = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(self.creds.config_dir),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
        ]
        with (
            self.log_path.open("ab") as stderr,
            self.log_path.with_suffix(".stdout").open("ab") as stdout,
        ):
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.creds.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        return self.proc

    async def start(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Launch, then wait for /healthz (and, with workers, for each to listen)."""
        proc = self.launch()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"gateway exited with {proc.returncode} at start:\n{self.log_text()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(
                        self.url("/healthz"), timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"gateway did not answer /healthz:\n{self.log_text()}")
        if self.workers > 1:
            await self.wait_workers_listening(self.workers, timeout=deadline - time.monotonic())

    def send(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway still running after {timeout}s")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        """Teardown: SIGKILL the whole process group, whatever state it is in."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    # -- workers (--workers N) ------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The live worker processes (multiprocessing spawn children, not the tracker)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        out = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(
                    child.cmdline()
                ):
                    out.append(child.pid)
        return out

    def listening_workers(self) -> list[int]:
        """Workers that have a socket listening on the gateway's port."""
        out = []
        for pid in self.worker_pids():
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(pid).net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == self.port:
                        out.append(pid)
                        break
        return out

    async def wait_workers_listening(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
        exclude: tuple[int, ...] = (),
    ) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.listening_workers() if p not in exclude]
            if len(pids) >= count:
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(pids)} of {count} workers listening (workers: {self.worker_pids()})"
                )
            await asyncio.sleep(0.05)

    async def metrics(self) -> str:
        """The text its metrics listener serves."""
        async with aiohttp.ClientSession() as s, s.get(self.metrics_url) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    # -- logs -------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """The log lines that parse as JSON objects (the others are skipped here)."""
        out = []
        for line in self.log_lines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    async def wait_log(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` JSON log records match ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records() if predicate(r)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no such log line after {timeout}s:\n{self.log_text()}")
            await asyncio.sleep(0.05)


def gateway_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one ``gateway`` command as an operator would (a process of its own), with
    every Python warning shown (``PYTHONWARNINGS=always``: none may reach its output)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd or ROOT,
        env={**env, "PYTHONWARNINGS": "always"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def refused(port: int) -> bool:
    """True when a new TCP connection to the gateway's port is refused."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


# ``spawn(creds, workers=1)``: a started ``gateway serve``, killed at the test's teardown.
Spawn = Callable[..., Awaitable[GatewayProcess]]
