"""A/B: the gateway at a git revision against the working tree, side by side.

    .venv/bin/python bench/ab.py --base HEAD            # unary c=64 and 64 streams
    .venv/bin/python bench/ab.py --base HEAD~3 --rounds 8 --duration 3

This machine's speed drifts by more than most single changes are worth, so a
before/after pair of bench/run.py reports says little. Here both gateways run at
once against one mock and one Redis, with identical configs, and the load
alternates between them (A B B A A B ...), so drift hits both alike. Reported per
mode: the median CPU time per answer (per event for streams) of each gateway
process, and the median of the per-pair ratios new / base.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import uvloop

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from loadgen import body_for, run_load  # noqa: E402
from run import (  # noqa: E402
    GATEWAY_BIN,
    PROJECT,
    PY,
    Processes,
    cleanup_redis_keys,
    free_port,
    paced_model,
    proc_cpu_s,
    start_redis,
    wait_http,
    write_gateway_config,
)

SERVE_FROM_TREE = (
    "import sys; from gateway.cli import main; sys.argv[0] = 'gateway'; sys.exit(main())"
)


def main() -> int:
    parser = argparse.ArgumentParser(description="gateway at --base vs the working tree")
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measured run")
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument(
        "--pace-ms", type=float, default=0.0, help="ms between a stream's chunks (0: a burst)"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gw-ab-"))
    base_tree = tmp / "base"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base],
        cwd=ROOT,
        check=True,
    )
    procs = Processes()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    redis_url = os.environ.get("REDIS_URL", "")
    key_prefix = "ab" + uuid.uuid4().hex[:10]
    try:
        if not redis_url:
            redis_url = start_redis(procs, tmp)
        mock_port = free_port()
        mock = f"http://127.0.0.1:{mock_port}"
        procs.start(
            "mock",
            [PY, str(BENCH / "mock_upstream.py"), "--port", str(mock_port),
             "--chunks", str(args.chunks)],
            tmp / "mock.log",
        )  # fmt: skip
        wait_http(mock + "/", procs=procs)
        targets = {}
        for name, tree in (("base", base_tree), ("new", ROOT)):
            config = tmp / f"config-{name}"
            paces = (args.pace_ms,) if args.pace_ms else ()
            key = write_gateway_config(
                config, mock + "/v1", redis_url, f"{key_prefix}{name}", paces
            )
            port = free_port()
            env = {**os.environ, "BENCH_PROVIDER_KEY": "sk-bench-not-a-real-key"}
            env.pop("REDIS_URL", None)
            serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                     "--workers", "1"]  # fmt: skip
            if name == "base":  # the base tree's package first on the path
                env["PYTHONPATH"] = str(tree)
                cmd = [PY, "-c", SERVE_FROM_TREE, *serve]
            else:
                cmd = [GATEWAY_BIN, *serve]
            procs.start(name, cmd, tmp / f"{name}.log", env=env)
            wait_http(f"http://127.0.0.1:{port}/readyz", procs=procs)
            url = f"http://127.0.0.1:{port}/v1/projects/{PROJECT}/chat/completions"
            targets[name] = (url, {"Authorization": f"Bearer {key}"}, procs.pid(name))

        expect = max(args.chunks, 2) + 2
        for mode in ("unary", "stream"):
            stream = mode == "stream"
            body = body_for(stream)
            if stream and args.pace_ms:
                body["model"] = paced_model(args.pace_ms)
            per: dict[str, list[float]] = {"base": [], "new": []}
            ratios = []
            for name in ("base", "new"):  # warm-up
                url, headers, _ = targets[name]
                loop.run_until_complete(
                    run_load(url, concurrency=64, duration=1.0, warmup=0, stream=stream,
                             headers=headers, expect_events=expect if stream else 0, body=body)
                )  # fmt: skip
            for r in range(args.rounds):
                order = ("base", "new") if r % 2 == 0 else ("new", "base")
                pair = {}
                for name in order:
                    url, headers, pid = targets[name]
                    before = proc_cpu_s(pid)
                    result = loop.run_until_complete(
                        run_load(url, concurrency=64, duration=args.duration, warmup=0,
                                 stream=stream, headers=headers,
                                 expect_events=expect if stream else 0, body=body)
                    )  # fmt: skip
                    cpu = proc_cpu_s(pid) - before
                    if result.non_200 or result.conn_errors or result.bad_streams:
                        print(f"{name}: errors in round {r}: {result}", file=sys.stderr)
                        return 1
                    count = result.total * (expect if stream else 1)
                    pair[name] = cpu / max(count, 1) * 1e6
                    per[name].append(pair[name])
                ratios.append(pair["new"] / pair["base"])
            unit = "event" if stream else "answer"
            print(
                f"{mode:6s} CPU us/{unit}: base {statistics.median(per['base']):7.1f}  "
                f"new {statistics.median(per['new']):7.1f}  "
                f"new/base {statistics.median(ratios):.3f} "
                f"(pairs: {' '.join(f'{x:.2f}' for x in ratios)})"
            )
        return 0
    finally:
        procs.stop_all()
        cleanup_redis_keys(redis_url, key_prefix)
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT)
        time.sleep(0)


if __name__ == "__main__":
    sys.exit(main())
