"""``serve --workers N``: N worker processes sharing the port (SO_REUSEPORT), each
restarted when it dies; stop signals and SIGHUP forwarded to every worker; workers die
with the supervisor, whatever kills it (gateway.serve.worker.worker_main)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time

from prometheus_client.multiprocess import mark_process_dead

from gateway.serve.env import SUPERVISOR_PID_ENV
from gateway.serve.worker import worker_main

log = logging.getLogger("gateway.supervisor")

# A worker that exits this soon after it started failed to start (say, the port is
# taken): restarting it again and again would hide that. After this many such exits in
# a row, the supervisor stops and exits with an error.
FAST_EXIT_SECONDS = 10.0
FAST_EXITS_TO_GIVE_UP = 5
# While other workers still serve, a worker that keeps failing at start (say, the config
# on disk was broken since) is retried with a growing pause, up to this, instead: the
# gateway serves on with fewer workers rather than stopping.
RESTART_BACKOFF_MAX_SECONDS = 30.0


def supervise(
    workers: int,
    config_dir: str,
    host: str,
    port: int,
    redis_url: str,
    metrics_listen: str,
) -> int:
    """Run ``workers`` workers; restart any that dies, unless they keep dying at start
    (then stop them all: exit status 1). ``metrics_listen`` is the command line's
    address ("" for the config's), served by the first slot's worker."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    started_at: dict[int, float] = {}
    fast_exits = 0
    processes: list[multiprocessing.process.BaseProcess] = []
    supervisor = os.getpid()

    def start(slot: int) -> multiprocessing.process.BaseProcess:
        # Only the first slot's worker binds the metrics listener (a second bind would
        # fail; its scrape reads every worker's values); restarted, it binds it again.
        metrics = metrics_listen if slot == 0 else None
        p = ctx.Process(
            target=worker_main,
            args=(supervisor, config_dir, host, port, redis_url, metrics),
        )
        p.start()
        started_at[id(p)] = time.monotonic()
        return p

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in processes:
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
        for slot in range(workers):
            if stopping:
                break
            processes.append(start(slot))
        restart_at: dict[int, float] = {}  # slot -> when its dead worker is started again
        while not stopping:
            now = time.monotonic()
            for i, p in enumerate(processes):
                if stopping:
                    break
                if i in restart_at:
                    if now >= restart_at[i]:
                        del restart_at[i]
                        processes[i] = start(i)
                    continue
                if p.is_alive():
                    continue
                lived = now - started_at.pop(id(p), 0.0)
                fast_exits = fast_exits + 1 if lived < FAST_EXIT_SECONDS else 0
                if p.pid is not None:
                    mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
                serving = any(
                    w.is_alive() for j, w in enumerate(processes) if j != i and j not in restart_at
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
        for p in processes:
            p.join()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
