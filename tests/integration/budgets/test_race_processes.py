"""Budgets hold under fire: several gateway processes, one Redis, caps on every scope.

Three ``gateway serve`` processes (``--workers 1``, ``--workers 1``, ``--workers 2``)
share one config directory, hence one Redis key prefix. A few hundred concurrent
requests, unary and streaming, of mixed sizes, from two API keys and several session
users, race for caps set on every dimension (input, output, total tokens, cost) and
every scope (org, project, per key, per user), so that only a fraction fits.

What can be proven, hence asserted:

* every answer is 200 or 402;
* no counter ever ends over its cap, and nothing stays reserved;
* used + reserved stays under the cap while the race runs (sampled);
* the counters hold exactly what the upstream reported for the admitted requests;
* no false 402: a refusal reports used + reserved + requested > limit, with the
  request's own worst case as ``requested``.

The figures (requests, admitted, refusals, used vs cap per counter, the largest
headroom left when a request was refused) are printed and written to FIGURES.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter as Tally
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.budget import keys
from gateway.credentials import generate_key
from tests.support.billing import cost, used
from tests.support.harness import (
    Credentials,
    add_api_key,
    bearer,
    edit_gateway_yaml,
    key_prefix,
    write_config,
)
from tests.support.process import GatewayProcess
from tests.support.redis import counter, tag, window_ids
from tests.support.upstream import FakeUpstream, Recorded, Reply, openai_completion, openai_stream

FIGURES = Path("/tmp/gateway-race-figures.json")
URL = "/v1/projects/alpha/chat/completions"
BURST = 320  # sent at once: at least 300 concurrent requests
TRICKLE = 160  # then spread over two seconds, so that settled usage reaches the caps
REQUESTS = BURST + TRICKLE
USERS = 5
CEILING = 100  # the harness projects' max_output_tokens
DIMS = ("input_tokens", "output_tokens", "total_tokens", "cost_usd")
WINDOW_NAMES = ("day", "month", "lifetime")

# Caps on every dimension and scope, sized so that a fraction of the requests fits: on
# average a request reports ~80 tokens (~21_000 nano-USD) and reserves ~250 (~70_000).
ORG_CAPS: dict[str, dict[str, Any]] = {
    "day": {"total_tokens": 15_000},
    "month": {"cost_usd": "0.0042"},
    "lifetime": {"input_tokens": 11_500},
}
PROJECT_CAPS: dict[str, dict[str, Any]] = {
    "day": {"input_tokens": 12_000},
    "month": {"output_tokens": 4_500, "cost_usd": "0.0045"},
    "lifetime": {"total_tokens": 16_000},
}
PER_KEY_CAPS: dict[str, dict[str, Any]] = {
    "day": {"cost_usd": "0.0012"},
    "month": {"total_tokens": 4_000},
}
PER_USER_CAPS: dict[str, dict[str, Any]] = {
    "day": {"total_tokens": 1_500},
    "lifetime": {"output_tokens": 450},
}


def nano(caps: dict[str, dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(window, dimension) -> limit, cost in integer nano-USD as the gateway keeps it."""
    out = {}
    for window, dims in caps.items():
        for dim, value in dims.items():
            out[(window, dim)] = round(float(value) * 1e9) if dim == "cost_usd" else int(value)
    return out


CAPS = {
    "org": nano(ORG_CAPS),
    "project": nano(PROJECT_CAPS),
    "key": nano(PER_KEY_CAPS),
    "user": nano(PER_USER_CAPS),
}


@dataclass
class Plan:
    """One request: what is sent, by whom, to which gateway process."""

    n: int
    text: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    who: str  # "key:key_main", "key:key_two", "user:<sub>"
    process: int
    offset: float  # seconds after the burst

    @property
    def input_bound(self) -> int:  # 16 per request + 8 per message + "user" + the text
        return 16 + 8 + 4 + len(self.text.encode())

    @property
    def ceiling(self) -> int:
        return CEILING if self.max_tokens is None else min(self.max_tokens, CEILING)

    def worst(self) -> dict[str, int]:
        i, o = self.input_bound, self.ceiling
        return {
            "input_tokens": i,
            "output_tokens": o,
            "total_tokens": i + o,
            "cost_usd": cost(i, o),
        }

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": self.text}]}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.stream:
            body["stream"] = True
            if self.include_usage:
                body["stream_options"] = {"include_usage": True}
        return body


def plans() -> list[Plan]:
    rng = random.Random(20240601)
    out = []
    for n in range(REQUESTS):
        words = rng.choice((0, 0, 1, 2, 4, 8, 16, 40))
        who_pick = rng.random()
        if who_pick < 0.25:
            who = "key:key_main"
        elif who_pick < 0.5:
            who = "key:key_two"
        else:
            who = f"user:racer-{rng.randrange(USERS)}"
        stream = rng.random() < 0.6
        out.append(
            Plan(
                n=n,
                text=f"req-{n:03d} " + "lorem ipsum " * words,
                max_tokens=rng.choice((None, 16, 40, 64, 100, 400)),
                stream=stream,
                include_usage=stream and rng.random() < 0.5,
                who=who,
                process=rng.randrange(3),
                offset=0.0 if n < BURST else rng.uniform(0.2, 2.2),
            )
        )
    return out


class Upstream:
    """The fake's default reply: usage is a deterministic function of the request (input
    under the gateway's bound, output under the max tokens it forwarded), after a small
    delay so that requests overlap."""

    def __init__(self) -> None:
        self.reported: dict[int, tuple[int, int]] = {}

    def __call__(self, rec: Recorded) -> Reply:
        body = rec.json()
        text = body["messages"][0]["content"]
        n = int(text[4:7])
        sent_max = body.get("max_tokens", body.get("max_completion_tokens"))
        assert isinstance(sent_max, int), body
        prompt = 10 + len(text) // 3
        completion = min(sent_max, 8 + n % 29)
        assert n not in self.reported, "a request reached the upstream twice"
        self.reported[n] = (prompt, completion)
        delay = 0.05 + (n % 5) * 0.02
        if body.get("stream"):
            pieces = [f"t{i} " for i in range(1 + completion // 4)]
            sse = openai_stream(pieces, prompt_tokens=prompt, completion_tokens=completion)
            return Reply(
                sse=sse, delay_before_headers=delay, slice_size=120, delay_between_slices=0.01
            )
        completion_body = openai_completion(prompt_tokens=prompt, completion_tokens=completion)
        return Reply(json=completion_body, delay_before_headers=delay)


@dataclass
class Outcome:
    plan: Plan
    status: int
    body: Any = None
    usage: dict[str, Any] | None = None
    started: float = 0.0
    ended: float = 0.0


async def send(
    http: aiohttp.ClientSession, gateways: list[GatewayProcess], auth: dict[str, str], plan: Plan
) -> Outcome:
    await asyncio.sleep(plan.offset)
    started = time.monotonic()
    url = gateways[plan.process].url(URL)
    async with http.post(url, json=plan.body(), headers=auth) as resp:
        raw = await resp.text()
        status = resp.status
    outcome = Outcome(plan, status, started=started, ended=time.monotonic())
    if status != 200:
        try:
            outcome.body = json.loads(raw)
        except ValueError:
            outcome.body = raw
        return outcome
    if not plan.stream:
        outcome.usage = json.loads(raw)["usage"]
        return outcome
    frames = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert frames[-1] == "[DONE]", raw[-300:]
    for frame in frames[:-1]:
        chunk = json.loads(frame)
        assert "error" not in chunk, chunk
        if chunk.get("usage"):
            outcome.usage = chunk["usage"]
    assert (outcome.usage is not None) == plan.include_usage
    return outcome


def counter_keys(prefix: str, ids: dict[str, str]) -> dict[tuple[str, str, str], str]:
    """(scope, who, window) -> Redis key, for every counter that has caps."""
    out: dict[tuple[str, str, str], str] = {}
    org, prj = tag(prefix, "acme", keys.ORG), tag(prefix, "prj_alpha")
    for window in WINDOW_NAMES:
        wid = ids[window]
        if any(w == window for w, _ in CAPS["org"]):
            out[("org", "acme", window)] = keys.counter_key(org, keys.ORG_COUNTER, wid)
        out[("project", "alpha", window)] = keys.counter_key(prj, keys.PROJECT_COUNTER, wid)
        for key_id in ("key_main", "key_two"):
            if any(w == window for w, _ in CAPS["key"]):
                out[("key", key_id, window)] = keys.counter_key(prj, keys.key_part(key_id), wid)
        for u in range(USERS):
            sub = f"racer-{u}"
            if any(w == window for w, _ in CAPS["user"]):
                out[("user", sub, window)] = keys.counter_key(prj, keys.user_part(sub), wid)
    return out


class Sampler:
    """Peak used + reserved of a few counters, read in a loop while the race runs."""

    def __init__(self, redis: Redis, keys: dict[tuple[str, str, str], str]) -> None:
        self.redis, self.keys = redis, keys
        self.peaks: dict[tuple[str, str, str], list[int]] = {k: [0, 0, 0, 0] for k in keys}
        self.samples = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.redis.pipeline(transaction=False)
            for key in self.keys.values():
                pipe.hgetall(key)
            for name, raw in zip(self.keys, await pipe.execute(), strict=True):
                got = {k.decode(): int(v) for k, v in raw.items()}
                peaks = self.peaks[name]
                for d in range(4):
                    peaks[d] = max(peaks[d], got.get(f"u{d}", 0) + got.get(f"r{d}", 0))
            self.samples += 1
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


def write_race_config(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str
) -> tuple[Credentials, str]:
    creds = write_config(
        tmp_path / "race",
        upstream.base_url,
        redis_url,
        projects={
            "alpha": {
                "budgets": {
                    "project": PROJECT_CAPS,
                    "per_key": PER_KEY_CAPS,
                    "per_user": PER_USER_CAPS,
                }
            }
        },
        gateway={"redis": {"timeout_ms": 2000}},  # a loaded 2-core machine, 4 workers
    )
    two = generate_key()
    add_api_key(creds, "key_two", two.prefix, two.sha256, ["write"])
    edit_gateway_yaml(creds, lambda data: data["orgs"]["acme"].update(budgets=ORG_CAPS))
    return creds, two.secret


@pytest.mark.serial
async def test_processes_racing_for_every_cap_never_overshoot(
    tmp_path: Path, upstream: FakeUpstream, redis_url: str, redis: Redis
) -> None:
    fake = Upstream()
    upstream.default = fake
    creds, key_two = write_race_config(tmp_path, upstream, redis_url)
    gateways = [
        GatewayProcess(creds, tmp_path / "gw-a.log", workers=1),
        GatewayProcess(creds, tmp_path / "gw-b.log", workers=1),
        GatewayProcess(creds, tmp_path / "gw-c.log", workers=2),
    ]
    try:
        await asyncio.gather(*(g.start(timeout=40) for g in gateways))
        await _race(creds, key_two, gateways, fake, upstream, redis)
    finally:
        for g in gateways:
            g.kill()


async def _race(
    creds: Credentials,
    key_two: str,
    gateways: list[GatewayProcess],
    fake: Upstream,
    upstream: FakeUpstream,
    redis: Redis,
) -> None:
    prefix = key_prefix(creds)
    ids = await window_ids(redis)
    counters = counter_keys(prefix, ids)
    auth = {
        "key:key_main": bearer(creds.key),
        "key:key_two": bearer(key_two),
        **{f"user:racer-{u}": bearer(creds.session(sub=f"racer-{u}")) for u in range(USERS)},
    }
    todo = plans()
    sampler = Sampler(redis, counters)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=45)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sampler.start()
        started = time.monotonic()
        try:
            outcomes = await asyncio.gather(*(send(http, gateways, auth[p.who], p) for p in todo))
        finally:
            await sampler.stop()
        elapsed = time.monotonic() - started

    # Every settlement is done before the answer's last byte (unary) or right after it
    # (streams): wait until nothing is held, then read the final counters.
    deadline = time.monotonic() + 10
    while True:
        finals = {name: await counter(redis, key) for name, key in counters.items()}
        if all(not any(c[f"r{d}"] for d in range(4)) for c in finals.values()):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ figures first
    statuses = Tally(o.status for o in outcomes)
    admitted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 402 and isinstance(o.body, dict)]
    by_scope = Tally(
        f"{o.body.get('scope')}/{o.body.get('window')}/{o.body.get('dimension')}" for o in refused
    )
    headroom = [
        (o.body["limit"] - o.body["used"] - o.body["reserved"], o)
        for o in refused
        if "limit" in o.body
    ]
    largest = max(headroom, key=lambda h: h[0], default=(None, None))
    per_counter = {}
    for (scope, who, window), state in finals.items():
        for (w, dim), limit in CAPS[scope].items():
            if w == window:
                d = DIMS.index(dim)
                per_counter[f"{scope}:{who}:{window}:{dim}"] = {
                    "used": state[f"u{d}"],
                    "cap": limit,
                    "unused": limit - state[f"u{d}"],
                    "peak_used_plus_reserved": sampler.peaks[(scope, who, window)][d],
                    "reserved_at_end": state[f"r{d}"],
                }
    figures = {
        "requests": len(outcomes),
        "burst": BURST,
        "burst_per_process": dict(sorted(Tally(p.process for p in todo[:BURST]).items())),
        "gateway_processes": "3 (workers 1, 1, 2)",
        "streams": sum(p.stream for p in todo),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "statuses_burst": {
            str(k): v for k, v in sorted(Tally(o.status for o in outcomes[:BURST]).items())
        },
        "statuses_trickle": {
            str(k): v for k, v in sorted(Tally(o.status for o in outcomes[BURST:]).items())
        },
        "admitted": len(admitted),
        "refused_402": len(refused),
        "refusals_by_scope_window_dimension": dict(sorted(by_scope.items())),
        "largest_headroom_left_at_a_refusal": None
        if largest[1] is None
        else {
            "headroom": largest[0],
            "requested": largest[1].body["requested"],
            "counter": f"{largest[1].body['scope']}/{largest[1].body['window']}/"
            f"{largest[1].body['dimension']}",
            "limit": largest[1].body["limit"],
            "used": largest[1].body["used"],
            "reserved": largest[1].body["reserved"],
        },
        "counters": per_counter,
        "sampler_reads": sampler.samples,
        "seconds": round(elapsed, 2),
        "other_answers": [
            (o.plan.n, o.status, str(o.body)[:200]) for o in outcomes if o.status not in (200, 402)
        ][:10],
    }
    await asyncio.to_thread(FIGURES.write_text, json.dumps(figures, indent=2, sort_keys=True))
    print("\n[race] " + json.dumps(figures, indent=1, sort_keys=True))

    # ------------------------------------------------------------------ assertions
    assert set(statuses) <= {200, 402}, figures["other_answers"]
    assert len(admitted) >= 20, statuses
    assert len(refused) >= 20, statuses  # only a fraction fits: the caps are contended
    assert len(by_scope) >= 4, by_scope  # refusals come from several scopes and caps

    # Exactly the admitted requests reached the upstream, once each.
    assert {o.plan.n for o in admitted} == set(fake.reported)
    assert len(upstream.requests) == len(admitted)
    for o in admitted:
        if o.usage is not None:
            assert (o.usage["prompt_tokens"], o.usage["completion_tokens"]) == fake.reported[
                o.plan.n
            ]

    # No false 402: refused only when the request's worst case did not fit.
    for o in refused:
        body = o.body
        assert body["error"] == "budget_exhausted"
        scope, window, dim = body["scope"], body["window"], body["dimension"]
        assert body["limit"] == CAPS[scope][(window, dim)], body
        assert body["requested"] == o.plan.worst()[dim], (body, o.plan)
        assert body["used"] + body["reserved"] + body["requested"] > body["limit"], body
        if scope == "key":
            assert o.plan.who.startswith("key:"), body
        if scope == "user":
            assert o.plan.who.startswith("user:"), body

    # Nothing over a cap, nothing left reserved, not even transiently over.
    for name, info in per_counter.items():
        assert info["used"] <= info["cap"], (name, info)
        assert info["peak_used_plus_reserved"] <= info["cap"], (name, info)
    for where, state in finals.items():
        assert all(state[f"r{d}"] == 0 for d in range(4)), (where, state)
    assert sampler.samples > 0
    assert await redis.hlen(f"{prefix}:{{prj:prj_alpha}}:rsv") == 0
    assert await redis.hlen(f"{prefix}:{{org:acme}}:rsv") == 0

    # The counters hold exactly what the upstream reported for the admitted requests.
    def totals(selected: list[Outcome]) -> dict[str, int]:
        i = sum(fake.reported[o.plan.n][0] for o in selected)
        out = sum(fake.reported[o.plan.n][1] for o in selected)
        return used(i, out)

    for (scope, who, _window), state in finals.items():
        if scope in ("org", "project"):
            selected = admitted
        elif scope == "key":
            selected = [o for o in admitted if o.plan.who == f"key:{who}"]
        else:
            selected = [o for o in admitted if o.plan.who == f"user:{who}"]
        assert state == totals(selected), (scope, who)
