"""Benchmark the gateway against a bare passthrough proxy and the mock upstream directly.

    .venv/bin/python bench/run.py            # full: 3 rounds, ~4 minutes
    .venv/bin/python bench/run.py --quick    # 1 short round, < 1 minute
    .venv/bin/python bench/run.py --profile 8   # then py-spy the gateway under load

Starts, all on 127.0.0.1: the mock upstream (bench/mock_upstream.py), the
passthrough (bench/passthrough.py -> mock) and the real gateway
(``gateway serve --workers 1``, auth + budgets + metrics on, a provider of kind
openai whose base_url is the mock) with a real Redis (REDIS_URL, else a private
redis-server). Every scenario runs against the three targets back to back, the
order rotated each round, and the table reports medians over rounds plus the
median of the per-round ratios gateway/passthrough. Writes bench/results/latest.md
and latest.json. Exits 1 if any request of the gateway failed (a benchmark of
errors is worthless), 0 otherwise (missed targets are reported, not fatal).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from loadgen import Result, body_for, run_load  # noqa: E402
from mock_upstream import stream_frames  # noqa: E402

from gateway.credentials import generate_key  # noqa: E402

PY = sys.executable
GATEWAY_BIN = str(Path(PY).parent / "gateway")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "passthrough", "gateway")
LABEL = {"direct": "direct mock", "passthrough": "passthrough", "gateway": "gateway"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------------ processes


class Processes:
    """Child processes, each in its own session; all stopped on exit, errors or signals."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(
        self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> int:
        self.logs[name] = log
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc.pid

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.logs[name].read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def wait_http(url: str, timeout: float = 20.0, procs: Processes | None = None) -> None:
    """Wait until GET ``url`` answers 200."""
    from urllib.error import URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if procs is not None:
            procs.check_alive()
        try:
            with urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


def start_redis(procs: Processes, tmp: Path) -> str:
    from gateway.embedded_redis import find_redis_server

    port = free_port()
    data = tmp / "redis"
    data.mkdir()
    binary = shutil.which("redis-server") or find_redis_server()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs.start("redis", [*args, "--dir", str(data)], tmp / "redis.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


# ------------------------------------------------------------------------ gateway config

PROJECT = "bench"
HUGE = 10**15


def write_gateway_config(root: Path, upstream: str, redis_url: str, key_prefix: str) -> str:
    """A config dir: one org, one API key, one project -> openai provider at the mock.

    Budgets on (project and per-key caps, far above what a run can spend), a price
    for the model, so every request reserves and settles in Redis. Returns the key.
    """
    key = generate_key()
    gw = {
        "listen": {"host": "127.0.0.1", "port": 0},
        # A free port, not the default 9464: ab.py runs two gateways at once.
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "redis": {"url": redis_url, "key_prefix": key_prefix, "timeout_ms": 1000},
        "limits": {"reservation_ttl_seconds": 120},
        "providers": {
            "mock": {
                "kind": "openai",
                "base_url": upstream,
                "api_key_env": "BENCH_PROVIDER_KEY",
                "timeouts": {"connect": 5, "first_byte": 30, "idle": 30, "total": 60},
            }
        },
        "prices": {"gpt-4o-mini": {"input": "0.15", "output": "0.60", "cached_input": "0.075"}},
        "orgs": {
            "bench": {
                "name": "Benchmark org",
                "api_keys": [
                    {
                        "id": "key_bench",
                        "prefix": key.prefix,
                        "sha256": key.sha256,
                        "scopes": ["read", "write"],
                    }
                ],
            }
        },
    }
    project = {
        "id": "prj_bench",
        "org": "bench",
        # Same SSE framing as the upstream, so the three targets send comparable bytes.
        "wire_profile": "openai",
        "default_model": "default",
        "models": {"default": {"routes": [{"provider": "mock", "model": "gpt-4o-mini"}]}},
        "max_output_tokens": 256,
        "budgets": {
            "project": {
                "day": {"total_tokens": HUGE, "cost_usd": "1000000"},
                "month": {"total_tokens": HUGE, "cost_usd": "1000000"},
            },
            "per_key": {"day": {"total_tokens": HUGE}, "month": {"cost_usd": "1000000"}},
        },
    }
    (root / "projects").mkdir(parents=True)
    (root / "keys").mkdir()
    (root / "gateway.yaml").write_text(yaml.safe_dump(gw, sort_keys=False))
    (root / "projects" / f"{PROJECT}.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    return key.secret


def cleanup_redis_keys(redis_url: str, key_prefix: str) -> None:
    """Delete this run's keys (only matters with a shared REDIS_URL)."""
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        batch = list(client.scan_iter(match=f"{key_prefix}:*", count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
        client.close()
    except Exception as exc:  # pragma: no cover - best effort
        print(f"warning: could not clean Redis keys {key_prefix}:*: {exc}", file=sys.stderr)


# ------------------------------------------------------------------------ measurement


@dataclass
class Target:
    name: str
    url: str
    pids: list[int]  # processes whose CPU is charged to the target (the proxy itself)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    title: str
    concurrency: int
    stream: bool
    # Milliseconds the mock waits between a stream's chunks (asked in the request body,
    # which both proxies pass on): each chunk its own write, as providers send tokens.
    pace_ms: float = 0.0

    def body(self) -> dict[str, Any]:
        body = body_for(self.stream)
        if self.pace_ms:
            body["mock_chunk_delay_ms"] = self.pace_ms
        return body


SCENARIOS = (
    Scenario("unary16", "unary, concurrency 16", 16, False),
    Scenario("unary64", "unary, concurrency 64", 64, False),
    Scenario("latency1", "unary, concurrency 1", 1, False),
    Scenario("stream64", "streaming, 64 concurrent streams", 64, True),
    Scenario("paced64", "streaming, 64 paced streams (1 ms between chunks)", 64, True, 1.0),
)


@dataclass
class Sample:
    result: Result
    proxy_cpu_s: float  # CPU of the target's own process over the run
    mock_cpu_s: float
    redis_cpu_s: float  # nan when Redis is not ours (REDIS_URL)
    client_cpu_s: float
    wall_s: float


def measure(
    loop: asyncio.AbstractEventLoop,
    target: Target,
    scenario: Scenario,
    duration: float,
    warmup: float,
    expect_events: int,
    mock_pid: int,
    redis_pid: int | None,
) -> Sample:
    gc.collect()
    cpu0 = [proc_cpu_s(p) for p in target.pids]
    mock0 = proc_cpu_s(mock_pid)
    redis0 = proc_cpu_s(redis_pid) if redis_pid else float("nan")
    client0 = time.process_time()
    wall0 = time.perf_counter()
    result = loop.run_until_complete(
        run_load(
            target.url,
            concurrency=scenario.concurrency,
            duration=duration,
            warmup=warmup,
            stream=scenario.stream,
            headers=target.headers,
            expect_events=expect_events if scenario.stream else 0,
            body=scenario.body(),
        )
    )
    wall = time.perf_counter() - wall0
    cpu = sum(proc_cpu_s(p) - c for p, c in zip(target.pids, cpu0, strict=True))
    redis = proc_cpu_s(redis_pid) - redis0 if redis_pid else float("nan")
    return Sample(
        result, cpu, proc_cpu_s(mock_pid) - mock0, redis, time.process_time() - client0, wall
    )


async def sanity(targets: list[Target], expect_events: int) -> list[str]:
    """One unary and one streaming request per target, checked in full."""
    import aiohttp

    problems: list[str] = []
    async with aiohttp.ClientSession() as session:
        for t in targets:
            async with session.post(t.url, json=body_for(False), headers=t.headers) as r:
                body = await r.read()
                if r.status != 200:
                    problems.append(f"{t.name} unary: HTTP {r.status} {body[:300]!r}")
                else:
                    doc = orjson.loads(body)
                    if not doc.get("choices") or not doc.get("usage"):
                        problems.append(f"{t.name} unary: no choices/usage in {body[:200]!r}")
            async with session.post(t.url, json=body_for(True), headers=t.headers) as r:
                body = await r.read()
                events = [e for e in body.split(b"\n\n") if e.strip()]
                if r.status != 200:
                    problems.append(f"{t.name} stream: HTTP {r.status} {body[:300]!r}")
                elif len(events) != expect_events or not events[-1].endswith(b"[DONE]"):
                    problems.append(
                        f"{t.name} stream: {len(events)} events (expected {expect_events}), "
                        f"last {events[-1][:80] if events else b''!r}"
                    )
                elif b'"usage"' not in events[-2]:
                    problems.append(f"{t.name} stream: no usage chunk before [DONE]")
    return problems


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------ report


def fmt(value: float, digits: int = 0) -> str:
    if value != value:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def build_report(
    samples: dict[tuple[str, str], list[Sample]],
    rss: dict[str, tuple[int, int]],
    meta: dict[str, Any],
    chunks_per_stream: int,
) -> tuple[str, dict[str, Any], bool]:
    """The markdown report, the JSON summary, and whether the gateway answered all 200."""

    def per_round(scn: str, tgt: str, get: Callable[[Sample], float]) -> list[float]:
        return [get(s) for s in samples[(scn, tgt)]]

    def medv(scn: str, tgt: str, get: Callable[[Sample], float]) -> float:
        return med(per_round(scn, tgt, get))

    def ratio(
        scn: str, get: Callable[[Sample], float], a: str = "gateway", b: str = "passthrough"
    ) -> float:
        pairs = zip(per_round(scn, a, get), per_round(scn, b, get), strict=True)
        return med([x / y if y else float("nan") for x, y in pairs])

    def added(scn: str, tgt: str, get: Callable[[Sample], float]) -> float:
        pairs = zip(per_round(scn, tgt, get), per_round(scn, "direct", get), strict=True)
        return med([x - y for x, y in pairs])

    rps = lambda s: s.result.rps  # noqa: E731
    p50 = lambda s: s.result.p50_ms  # noqa: E731
    p90 = lambda s: s.result.p90_ms  # noqa: E731
    p99 = lambda s: s.result.p99_ms  # noqa: E731
    eps = lambda s: s.result.events_per_s  # noqa: E731
    ttfe = lambda s: s.result.ttfe_p50_ms  # noqa: E731
    cpu_req = lambda s: s.proxy_cpu_s / max(s.result.total, 1) * 1e6  # noqa: E731
    # total events over the whole run is not counted; streams answered * events per stream is.
    cpu_chunk = lambda s: s.proxy_cpu_s / max(s.result.total * (chunks_per_stream + 2), 1) * 1e6  # noqa: E731

    rows: list[
        tuple[str, list[str], str, str, str]
    ] = []  # metric, 3 values, ratio, target, verdict
    summary: dict[str, Any] = {"meta": meta, "metrics": {}}
    verdicts: list[bool] = []

    def row(
        metric: str,
        scn: str,
        get: Callable[[Sample], float],
        digits: int,
        *,
        show_ratio: bool = True,
        goal: str = "",
        check: Callable[[float], bool] | None = None,
        targets: tuple[str, ...] = TARGETS,
    ) -> None:
        vals = {t: medv(scn, t, get) for t in targets}
        r = ratio(scn, get) if show_ratio else float("nan")
        verdict = ""
        if check is not None:
            ok = check(r)
            verdicts.append(ok)
            verdict = "PASS" if ok else "**FAIL**"
        rows.append(
            (
                metric,
                [fmt(vals[t], digits) if t in vals else "" for t in TARGETS],
                f"{r:.2f}" if show_ratio and r == r else "",
                goal,
                verdict,
            )
        )
        summary["metrics"][metric] = {**vals, "gateway/passthrough": r}

    row("unary req/s, c=16", "unary16", rps, 0, goal=">= 0.50", check=lambda r: r >= 0.5)
    row("unary req/s, c=64", "unary64", rps, 0, goal=">= 0.50", check=lambda r: r >= 0.5)
    row("unary p50 ms, c=16", "unary16", p50, 2)
    row("unary p99 ms, c=16", "unary16", p99, 2)
    row("unary p50 ms, c=64", "unary64", p50, 2)
    row("unary p90 ms, c=64", "unary64", p90, 2)
    row("unary p99 ms, c=64", "unary64", p99, 2)
    row("latency p50 ms, c=1", "latency1", p50, 3)
    row("latency p99 ms, c=1", "latency1", p99, 3)
    for metric, get, goal in (
        ("added p50 ms, c=1 (vs direct)", p50, "< 1 ms"),
        ("added p99 ms, c=1 (vs direct)", p99, ""),
    ):
        vals = {t: added("latency1", t, get) for t in ("passthrough", "gateway")}
        verdict = ""
        if goal:
            ok = vals["gateway"] < 1.0
            verdicts.append(ok)
            verdict = "PASS" if ok else "**FAIL**"
        rows.append(
            (metric, ["", fmt(vals["passthrough"], 3), fmt(vals["gateway"], 3)], "", goal, verdict)
        )
        summary["metrics"][metric] = vals
    row("stream chunks/s, 64 streams", "stream64", eps, 0, goal=">= 0.70", check=lambda r: r >= 0.7)
    row("streams/s, 64 streams", "stream64", rps, 0)
    row("stream time to first chunk p50 ms", "stream64", ttfe, 2)
    row("stream duration p50 ms", "stream64", p50, 2)
    row("paced stream chunks/s, 64 streams", "paced64", eps, 0)
    row("paced stream time to first chunk p50 ms", "paced64", ttfe, 2)
    proxies = ("passthrough", "gateway")
    row("proxy CPU us / unary request (c=64)", "unary64", cpu_req, 0, targets=proxies)
    row("proxy CPU us / stream chunk", "stream64", cpu_chunk, 1, targets=proxies)
    row("proxy CPU us / paced stream chunk", "paced64", cpu_chunk, 1, targets=proxies)
    row(
        "mock CPU us / unary request (c=64)",
        "unary64",
        lambda s: s.mock_cpu_s / max(s.result.total, 1) * 1e6,
        0,
    )
    row(
        "Redis CPU us / unary request (c=64)",
        "unary64",
        lambda s: s.redis_cpu_s / max(s.result.total, 1) * 1e6,
        0,
        show_ratio=False,
    )
    row(
        "client CPU share, unary c=64",
        "unary64",
        lambda s: s.client_cpu_s / s.wall_s,
        2,
        show_ratio=False,
    )

    hwm = {t: rss.get(t, (0, 0))[1] / 1024 for t in TARGETS}
    idle = {t: rss.get(t, (0, 0))[0] / 1024 for t in TARGETS}
    rows.append(
        (
            "RSS after start, MiB",
            [fmt(idle[t], 1) for t in TARGETS],
            f"{idle['gateway'] / idle['passthrough']:.2f}" if idle["passthrough"] else "",
            "",
            "",
        )
    )
    rows.append(
        (
            "peak RSS (VmHWM), MiB",
            [fmt(hwm[t], 1) for t in TARGETS],
            f"{hwm['gateway'] / hwm['passthrough']:.2f}" if hwm["passthrough"] else "",
            "",
            "",
        )
    )
    summary["metrics"]["peak RSS MiB"] = hwm
    summary["metrics"]["RSS after start MiB"] = idle

    # Errors over every run, all scenarios and rounds.
    errors: dict[str, dict[str, int]] = {}
    samples_error: dict[str, str] = {}
    for t in TARGETS:
        e = {"answered": 0, "non_200": 0, "conn_errors": 0, "bad_streams": 0}
        for (_scn, tgt), lst in samples.items():
            if tgt != t:
                continue
            for s in lst:
                e["answered"] += s.result.total
                e["non_200"] += s.result.non_200
                e["conn_errors"] += s.result.conn_errors
                e["bad_streams"] += s.result.bad_streams
                if s.result.sample_error and t not in samples_error:
                    samples_error[t] = s.result.sample_error
        errors[t] = e
    rows.append(("answers (all runs)", [fmt(errors[t]["answered"]) for t in TARGETS], "", "", ""))
    rows.append(
        (
            "non-200 / conn errors / bad streams",
            [
                f"{errors[t]['non_200']} / {errors[t]['conn_errors']} / {errors[t]['bad_streams']}"
                for t in TARGETS
            ],
            "",
            "0 / 0 / 0",
            "PASS"
            if sum(v for k, v in errors["gateway"].items() if k != "answered") == 0
            else "**FAIL**",
        )
    )
    summary["errors"] = errors
    gateway_clean = sum(v for k, v in errors["gateway"].items() if k != "answered") == 0

    lines = [
        "# Gateway benchmark",
        "",
        f"{meta['date']} · {meta['mode']} · {meta['rounds']} round(s) x {meta['duration_s']} s per run"
        f" (+{meta['warmup_s']} s warm-up) · {meta['cpus']} CPU(s) · Python {meta['python']}"
        f" · load average {meta['loadavg_start']} → {meta['loadavg_end']}",
        "",
        f"Targets: **direct mock** (the client's own ceiling), **passthrough** (bare aiohttp proxy), "
        f"**gateway** (`gateway serve --workers 1`, API key auth, budgets in Redis ({meta['redis']}), "
        f"metrics, JSON access logs). Streams: {chunks_per_stream} chunks + usage + [DONE] each. "
        "Values are medians over rounds; the ratio is the median of the per-round ratios.",
        "",
        "| metric | direct mock | passthrough | gateway | gateway / passthrough | target | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for metric, vals, r, goal, verdict in rows:
        lines.append(f"| {metric} | {' | '.join(vals)} | {r} | {goal} | {verdict} |")
    lines.append("")
    met = sum(verdicts)
    lines.append(
        f"Targets met: {met}/{len(verdicts)}; gateway answered all 200: {'yes' if gateway_clean else 'NO'}."
    )
    for t, msg in samples_error.items():
        lines.append(f"- first error seen on {t}: `{msg}`")
    lines += [
        "",
        "## Per round",
        "",
        "| scenario | round | target | req/s | chunks/s | p50 ms | p99 ms | proxy CPU s | client CPU s | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scn in SCENARIOS:
        n = len(samples[(scn.name, "gateway")])
        for i in range(n):
            for t in TARGETS:
                s = samples[(scn.name, t)][i]
                res = s.result
                lines.append(
                    f"| {scn.title} | {i + 1} | {t} | {fmt(res.rps)} | {fmt(res.events_per_s) if scn.stream else ''} | "
                    f"{fmt(res.p50_ms, 3)} | {fmt(res.p99_ms, 3)} | {fmt(s.proxy_cpu_s, 2) if t != 'direct' else ''} | "
                    f"{fmt(s.client_cpu_s, 2)} | {res.errors} |"
                )
    lines.append("")
    return "\n".join(lines), summary, gateway_clean


# ------------------------------------------------------------------------ profile


def profile_gateway(
    loop: asyncio.AbstractEventLoop, gw: Target, seconds: float, out_dir: Path, expect_events: int
) -> str:
    """py-spy the gateway under unary and streaming load; summarise gateway/ hot spots."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        return "py-spy not installed (`.venv/bin/pip install py-spy`): no profile.\n"
    report = ["## Gateway profile (py-spy, samples of the gateway process)", ""]
    for name, scn in (
        ("unary", Scenario("p", "unary c=64", 64, False)),
        ("stream", Scenario("p", "stream c=64", 64, True)),
    ):
        raw = out_dir / f"profile-{name}.txt"
        spy = subprocess.Popen(
            [pyspy, "record", "-p", str(gw.pids[0]), "-d", str(int(seconds)), "-r", "200",
             "--format", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            loop.run_until_complete(
                run_load(gw.url, concurrency=scn.concurrency, duration=seconds, warmup=0.2,
                         stream=scn.stream, headers=gw.headers, expect_events=expect_events if scn.stream else 0)
            )  # fmt: skip
            _, err = spy.communicate(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if spy.returncode != 0 or not raw.exists():
            report.append(
                f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}\n"
            )
            continue
        report.append(summarise_profile(raw, f"{scn.title} ({raw.name})"))
    return "\n".join(report)


def summarise_profile(raw: Path, title: str, top: int = 15) -> str:
    """Top frames of a py-spy raw (collapsed) profile.

    "Innermost gateway/ line" charges each sample to the deepest frame in gateway/
    code: the gateway line whose call (including library work below it) was running.
    Samples whose deepest gateway frame is the worker entry point are aiohttp's
    server machinery and the event loop, outside any gateway handler code.
    """
    self_t: dict[str, int] = defaultdict(int)
    inner_gw: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [f for f in stack.split(";") if f]
        if frames:
            self_t[_short(frames[-1])] += count
        gw = [f for f in frames if "gateway/" in f and "/bench/" not in f]
        if not gw:
            key = "(stack without gateway frames)"
        elif "gateway/cli.py" in gw[-1]:
            key = "(aiohttp server + event loop, outside handlers)"
        else:
            key = _short(gw[-1])
        inner_gw[key] += count
    if not total:
        return f"### {title}\n\nno samples\n"
    out = [f"### {title}", "", f"{total} samples.", "",
           "Innermost gateway/ line (self + library calls under it):", "",
           "| % samples | frame |", "| ---: | --- |"]  # fmt: skip
    for frame, n in sorted(inner_gw.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"| {100 * n / total:.1f} | `{frame}` |")
    out += ["", "Self time (leaf frame, any code):", "", "| % samples | frame |", "| ---: | --- |"]
    for frame, n in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"| {100 * n / total:.1f} | `{frame}` |")
    out.append("")
    return "\n".join(out)


def _short(frame: str) -> str:
    """'func (path/to/site-packages/aiohttp/x.py:12)' -> 'func (aiohttp/x.py:12)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


# ------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description="gateway vs passthrough vs direct, side by side")
    parser.add_argument("--quick", action="store_true", help="1 short round (< 1 minute)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds per measured run")
    parser.add_argument("--chunks", type=int, default=50, help="chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--log-level", default="INFO", help="gateway GATEWAY_LOG_LEVEL")
    parser.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                        help="after the rounds, py-spy the gateway under load for SECONDS per mode")  # fmt: skip
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (1.5 if args.quick else 4.0)
    warmup = 0.3 if args.quick else 0.5
    expect_events = max(args.chunks, 2) + 2
    assert len(stream_frames(args.chunks)) == expect_events

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (background)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    procs = Processes()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    redis_url = os.environ.get("REDIS_URL", "")
    key_prefix = "bench" + uuid.uuid4().hex[:10]
    started = time.monotonic()
    try:
        redis_pid: int | None = None
        if not redis_url:
            redis_url = start_redis(procs, tmp)
            redis_desc = "private redis-server"
            redis_pid = procs.pid("redis")
        else:
            redis_desc = "REDIS_URL"
        mock_port, pt_port, gw_port = free_port(), free_port(), free_port()
        mock = f"http://127.0.0.1:{mock_port}"
        procs.start(
            "mock",
            [PY, str(BENCH / "mock_upstream.py"), "--port", str(mock_port), "--chunks", str(args.chunks),
             "--chunk-delay-ms", str(args.chunk_delay_ms)],
            tmp / "mock.log",
        )  # fmt: skip
        procs.start(
            "passthrough",
            [PY, str(BENCH / "passthrough.py"), "--port", str(pt_port), "--upstream", mock],
            tmp / "passthrough.log",
        )
        config_dir = tmp / "config"
        key = write_gateway_config(config_dir, mock + "/v1", redis_url, key_prefix)
        env = {
            **os.environ,
            "BENCH_PROVIDER_KEY": "sk-bench-not-a-real-key",
            "GATEWAY_LOG_LEVEL": args.log_level,
        }
        env.pop("REDIS_URL", None)  # the config names the Redis explicitly
        procs.start(
            "gateway",
            [GATEWAY_BIN, "serve", "--config", str(config_dir), "--host", "127.0.0.1",
             "--port", str(gw_port), "--workers", "1"],
            tmp / "gateway.log",
            env=env,
        )  # fmt: skip
        wait_http(mock + "/", procs=procs)
        wait_http(f"http://127.0.0.1:{pt_port}/healthz", procs=procs)
        wait_http(f"http://127.0.0.1:{gw_port}/readyz", procs=procs)

        path = "/v1/chat/completions"
        targets = [
            Target("direct", mock + path, []),
            Target("passthrough", f"http://127.0.0.1:{pt_port}{path}", [procs.pid("passthrough")]),
            Target(
                "gateway",
                f"http://127.0.0.1:{gw_port}/v1/projects/{PROJECT}/chat/completions",
                [procs.pid("gateway")],
                {"Authorization": f"Bearer {key}"},
            ),
        ]
        problems = loop.run_until_complete(sanity(targets, expect_events))
        if problems:
            print("sanity check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
            print("gateway log tail:\n" + procs.tail("gateway"), file=sys.stderr)
            return 1
        # Warm-up: connection pools, caches, first-request paths; not measured.
        for t in targets:
            for scn in (SCENARIOS[1], SCENARIOS[3]):
                loop.run_until_complete(
                    run_load(t.url, concurrency=scn.concurrency, duration=0.5 if args.quick else 1.0,
                             warmup=0, stream=scn.stream, headers=t.headers,
                             expect_events=expect_events if scn.stream else 0)
                )  # fmt: skip
        rss_idle = {
            "direct": proc_status_kb(procs.pid("mock"), "VmRSS"),
            "passthrough": proc_status_kb(procs.pid("passthrough"), "VmRSS"),
            "gateway": proc_status_kb(procs.pid("gateway"), "VmRSS"),
        }
        loadavg_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        samples: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        runs = rounds * len(SCENARIOS) * len(TARGETS)
        n = 0
        for rnd in range(rounds):
            for si, scn in enumerate(SCENARIOS):
                k = (rnd + si) % len(targets)
                for t in targets[k:] + targets[:k]:  # rotate the order: no target always first
                    n += 1
                    procs.check_alive()
                    s = measure(
                        loop, t, scn, duration, warmup, expect_events, procs.pid("mock"), redis_pid
                    )
                    samples[(scn.name, t.name)].append(s)
                    r = s.result
                    extra = (
                        f"{r.events_per_s:>10,.0f} chunks/s"
                        if scn.stream
                        else f"p50 {r.p50_ms:7.3f} ms p99 {r.p99_ms:7.3f} ms"
                    )
                    err = f"  ERRORS {r.errors}: {r.sample_error}" if r.errors else ""
                    print(f"[{n:>2}/{runs}] round {rnd + 1} {scn.title:<34} {t.name:<12} {r.rps:>9,.0f} req/s  {extra}{err}", flush=True)  # fmt: skip
                    time.sleep(0.2)
        rss = {
            "direct": (rss_idle["direct"], proc_status_kb(procs.pid("mock"), "VmHWM")),
            "passthrough": (
                rss_idle["passthrough"],
                proc_status_kb(procs.pid("passthrough"), "VmHWM"),
            ),
            "gateway": (rss_idle["gateway"], proc_status_kb(procs.pid("gateway"), "VmHWM")),
        }
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "mode": "quick" if args.quick else "full",
            "rounds": rounds,
            "duration_s": duration,
            "warmup_s": warmup,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": loadavg_start,
            "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "redis": redis_desc,
            "chunks_per_stream": args.chunks,
            "chunk_delay_ms": args.chunk_delay_ms,
        }
        report, summary, clean = build_report(samples, rss, meta, args.chunks)
        if args.profile > 0:
            report += "\n" + profile_gateway(loop, targets[2], args.profile, out_dir, expect_events)
        report += f"\nTotal wall time: {time.monotonic() - started:.0f} s.\n"
        print()
        print(report)
        (out_dir / "latest.md").write_text(report)
        (out_dir / "latest.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        print(f"written to {out_dir / 'latest.md'}")
        if not clean:
            print("gateway log tail:\n" + procs.tail("gateway"), file=sys.stderr)
        return 0 if clean else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if os.environ.get("REDIS_URL"):
            cleanup_redis_keys(os.environ["REDIS_URL"], key_prefix)
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
