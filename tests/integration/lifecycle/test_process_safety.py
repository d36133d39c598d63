"""What ``gateway serve`` leaves behind when it dies or is stopped in odd ways.

Real ``gateway serve`` subprocesses (tests/support/process.py), most on the embedded
redis-server: nothing may outlive the gateway (SIGKILL, SIGTERM at start), one data
directory serves one gateway at a time, and a signal to the whole process group
(Ctrl-C, systemd's KillMode=control-group) still lets requests in flight settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from redis.asyncio import Redis

from gateway.serve.embedded_redis import EmbeddedRedis, find_redis_server
from tests.support.harness import Credentials, bearer, chat_body, write_config
from tests.support.metrics import sample_sum
from tests.support.process import GatewayProcess, refused
from tests.support.redis import month_counter
from tests.support.upstream import FakeUpstream, stream_over

CHAT = "/v1/projects/alpha/chat/completions"
PREFIX = "ps"


def embedded_creds(tmp_path: Path, upstream: FakeUpstream, **limits: float) -> Credentials:
    return write_config(
        tmp_path / "config",
        upstream.base_url,
        "",  # no Redis URL: the embedded redis-server in tmp_path/data
        gateway={
            "redis": {"url": "", "data_dir": str(tmp_path / "data"), "key_prefix": PREFIX},
            "limits": {"reservation_ttl_seconds": 60, **limits},
        },
    )


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def redis_servers(data_dir: Path) -> list[psutil.Process]:
    """The redis-server processes working in ``data_dir`` (redis-server rewrites its
    command line, so its working directory tells too)."""
    out = []
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if "redis" not in (proc.info["name"] or ""):
                continue
            here = str(data_dir) in " ".join(proc.cmdline()) or proc.cwd() == str(data_dir)
            if here and alive(proc):
                out.append(proc)
    return out


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


async def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:  # noqa: ASYNC109
    """Wait until none of ``procs`` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


@pytest.fixture
def leftovers(tmp_path: Path) -> Iterator[list[psutil.Process]]:
    """Processes a test saw, killed at teardown whatever happened (and every
    redis-server still working in the test's data directory)."""
    seen: list[psutil.Process] = []
    yield seen
    for proc in [*seen, *redis_servers(tmp_path / "data")]:
        with contextlib.suppress(psutil.Error):
            proc.kill()


async def chat_ok(gw: GatewayProcess, creds: Credentials) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.url(CHAT), json=chat_body(), headers=bearer(creds.key)) as resp,
    ):
        assert resp.status == 200, await resp.text()


# --------------------------------------------------------------------- death of the gateway


@pytest.mark.parametrize("workers", [1, 2], ids=["single-process", "2-workers"])
async def test_sigkill_of_the_gateway_takes_its_workers_and_redis_along(
    tmp_path: Path,
    upstream: FakeUpstream,
    processes: list[GatewayProcess],
    leftovers: list[psutil.Process],
    workers: int,
) -> None:
    """kill -9 (or the OOM killer) of the supervisor or the single process: its
    workers and its redis-server used to run on under pid 1, serving on the port (a
    restarted gateway shared it, SO_REUSEPORT) with budgets in a second Redis."""
    creds = embedded_creds(tmp_path, upstream)
    gw = GatewayProcess(creds, tmp_path / "first.log", workers)
    processes.append(gw)
    await gw.start(timeout=30)
    family = descendants(gw.pid)
    leftovers.extend(family)
    assert len(redis_servers(tmp_path / "data")) == 1
    assert len(gw.worker_pids()) == (workers if workers > 1 else 0)

    os.kill(gw.pid, signal.SIGKILL)
    assert await gw.wait_exit(5) == -signal.SIGKILL
    left = await wait_gone(family, 15)
    assert left == [], [(p.pid, p.name()) for p in left]
    assert await refused(gw.port)

    # A gateway started at once on the same data directory gets it (and the budgets).
    gw2 = GatewayProcess(creds, tmp_path / "second.log")
    gw2.port = gw.port
    processes.append(gw2)
    await gw2.start(timeout=30)
    leftovers.extend(descendants(gw2.pid))
    await chat_ok(gw2, creds)
    assert len(redis_servers(tmp_path / "data")) == 1


# ------------------------------------------------------------------- one data dir, one gateway


async def test_a_second_gateway_on_the_same_data_dir_refuses_to_start(
    tmp_path: Path,
    upstream: FakeUpstream,
    processes: list[GatewayProcess],
    leftovers: list[psutil.Process],
) -> None:
    """It used to start a second redis-server on the same AOF (budgets split between
    them), and stopping either unlinked the socket the other one answered on."""
    creds = embedded_creds(tmp_path, upstream)
    first = GatewayProcess(creds, tmp_path / "first.log")
    processes.append(first)
    await first.start(timeout=30)
    leftovers.extend(descendants(first.pid))
    servers = redis_servers(tmp_path / "data")
    assert len(servers) == 1

    second = GatewayProcess(creds, tmp_path / "second.log")
    processes.append(second)
    second.launch()
    code = await second.wait_exit(25)
    leftovers.extend(descendants(second.pid))
    assert code != 0
    errors = [r for r in second.records() if r.get("level") in ("ERROR", "error")]
    assert any("in use" in str(r) for r in errors), second.log_text()[-2000:]
    assert [p.pid for p in redis_servers(tmp_path / "data")] == [servers[0].pid]

    # The first one is untouched: its socket, its Redis, its budgets.
    assert (tmp_path / "data" / "redis.sock").exists()
    await chat_ok(first, creds)
    first.send(signal.SIGTERM)
    assert await first.wait_exit(20) == 0
    assert await wait_gone(servers, 5) == []


def test_embedded_redis_never_unlinks_a_socket_a_live_server_answers_on(tmp_path: Path) -> None:
    """A redis-server that holds no lock (an orphan of an older gateway, say) answers on
    the data dir's socket: starting refuses, and that server keeps its socket."""
    data = tmp_path / "data"
    data.mkdir()
    sock = data / "redis.sock"
    other = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = EmbeddedRedis(data)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline
            assert other.poll() is None
            time.sleep(0.02)
        with pytest.raises(RuntimeError, match="answers on"):
            server.start(timeout=5)
        assert server.process is None
        assert sock.exists()
        assert other.poll() is None
    finally:
        server.stop()
        other.kill()
        other.wait()


# ---------------------------------------------------------------- signals to the process group


@pytest.mark.parametrize(
    ("signum", "workers"),
    [
        pytest.param(signal.SIGINT, 1, id="ctrl-c-single-process"),
        pytest.param(signal.SIGTERM, 2, id="systemd-stop-2-workers"),
    ],
)
async def test_a_signal_to_the_process_group_lets_requests_in_flight_settle(
    tmp_path: Path,
    upstream: FakeUpstream,
    processes: list[GatewayProcess],
    leftovers: list[psutil.Process],
    signum: int,
    workers: int,
) -> None:
    """Ctrl-C on a terminal, systemd's KillMode=control-group: every process of the
    group gets the signal. The embedded redis-server used to stop at once, so the
    stream in flight could not settle ("usage not recorded")."""
    creds = embedded_creds(tmp_path, upstream, drain_seconds=0, shutdown_grace_seconds=15)
    gw = GatewayProcess(creds, tmp_path / "gateway.log", workers)
    processes.append(gw)
    await gw.start(timeout=30)
    leftovers.extend(descendants(gw.pid))

    upstream.script(stream_over(2.0))
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.post(gw.url(CHAT), json=chat_body(stream=True), headers=bearer(creds.key)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert await resp.content.readline()  # the stream is under way
        os.killpg(gw.pid, signum)  # what the terminal / systemd does
        rest = (await resp.content.read()).decode()
    assert "[DONE]" in rest, rest[-500:]
    assert await gw.wait_exit(25) == 0
    assert "usage not recorded" not in gw.log_text()

    # What the stream used is in the budget store, nothing left reserved.
    server = EmbeddedRedis(tmp_path / "data")
    server.start()
    assert server.process is not None
    leftovers.append(psutil.Process(server.process.pid))
    redis = Redis.from_url(server.url)
    try:
        counter = await month_counter(redis, PREFIX)
    finally:
        await redis.aclose()
        server.stop()
    assert [counter[f"r{d}"] for d in range(4)] == [0, 0, 0, 0], counter
    assert counter["u2"] == 40, counter  # 20 prompt + 20 completion tokens


# ----------------------------------------------------------------------- SIGTERM while starting


@pytest.mark.parametrize("workers", [1, 2], ids=["single-process", "2-workers"])
async def test_sigterm_while_starting_stops_the_embedded_redis(
    tmp_path: Path,
    upstream: FakeUpstream,
    processes: list[GatewayProcess],
    leftovers: list[psutil.Process],
    workers: int,
) -> None:
    """SIGTERM once redis-server is up, before the gateway serves (systemctl stop,
    a Kubernetes rollout): it used to kill the gateway with the default action and
    leave redis-server (and workers) running."""
    creds = embedded_creds(tmp_path, upstream)
    gw = GatewayProcess(creds, tmp_path / "gateway.log", workers)
    processes.append(gw)
    gw.launch()
    sock = tmp_path / "data" / "redis.sock"
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert time.monotonic() < deadline, gw.log_text()
        assert gw.proc is not None
        assert gw.proc.poll() is None, gw.log_text()
        await asyncio.sleep(0.005)
    # Freeze the gateway right there (still starting), so the signal lands in that
    # window whatever the machine's load.
    gw.send(signal.SIGSTOP)
    family = descendants(gw.pid)
    leftovers.extend(family)
    assert any("redis" in p.name() for p in family), family
    gw.send(signal.SIGTERM)
    gw.send(signal.SIGCONT)
    assert await gw.wait_exit(20) == 0, gw.log_text()[-2000:]
    left = await wait_gone(family + descendants(gw.pid), 5)
    assert left == [], [(p.pid, p.name()) for p in left]
    assert redis_servers(tmp_path / "data") == []


# ------------------------------------------------------------------------- metrics directory


async def gateway_requests(gw: GatewayProcess) -> float:
    return sample_sum(await gw.metrics(), "gateway_requests_total")


async def test_a_single_process_gateway_ignores_an_inherited_multiproc_dir(
    tmp_path: Path,
    upstream: FakeUpstream,
    redis_url: str,
    processes: list[GatewayProcess],
) -> None:
    """PROMETHEUS_MULTIPROC_DIR in the environment: a single process used to write its
    values there and never clear them, so the next run started with the last run's."""
    inherited = tmp_path / "multiproc"
    inherited.mkdir()
    creds = write_config(tmp_path / "config", upstream.base_url, redis_url)
    creds.env["PROMETHEUS_MULTIPROC_DIR"] = str(inherited)
    for run in (1, 2):
        gw = GatewayProcess(creds, tmp_path / f"run{run}.log")
        processes.append(gw)
        await gw.start(timeout=30)
        assert await gateway_requests(gw) == 0  # a fresh process starts from zero
        await chat_ok(gw, creds)
        await chat_ok(gw, creds)
        assert await gateway_requests(gw) == 2
        gw.send(signal.SIGTERM)
        assert await gw.wait_exit(20) == 0
    assert list(inherited.iterdir()) == []
