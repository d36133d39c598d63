"""Process lifecycle of ``gateway serve``: graceful shutdown, reloads, workers.

Every test runs the real command in a subprocess (tests/support/process.py) against a real
Redis and the fake upstream, which runs in the test's event loop and is reached by
the gateway over TCP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import yaml
from redis.asyncio import Redis

from gateway.credentials import generate_key
from tests.support.harness import (
    OPERATOR_TOKEN,
    PROVIDER_KEY,
    UNAUTHORIZED,
    Credentials,
    MakeCreds,
    add_api_key,
    bearer,
    chat_body,
    edit_gateway_yaml,
)
from tests.support.metrics import families, sample_sum
from tests.support.process import GatewayProcess, Spawn, refused
from tests.support.redis import month_counter, open_reservations, settled
from tests.support.sse import content_of, json_frames, sse_frames
from tests.support.upstream import FakeUpstream, stream_over, words

CHAT = "/v1/projects/{}/chat/completions"
CEILING = 100  # harness: every project has max_output_tokens 100
PROMPT_TOKENS = 20


async def read_rest(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """What is left of a streamed body, and how it ended if the connection dropped."""
    buffer = bytearray()
    try:
        async for piece in resp.content.iter_any():
            buffer += piece
    except aiohttp.ClientPayloadError as exc:
        return buffer.decode(), f"connection dropped mid-body: {exc!r}"
    return buffer.decode(), ""


# ------------------------------------------------------------------------ graceful shutdown


@pytest.mark.serial
async def test_sigterm_drains_then_finishes_the_stream_in_flight(
    make_creds: MakeCreds,
    spawn: Spawn,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    creds = make_creds(limits={"drain_seconds": 0.5, "shutdown_grace_seconds": 5})
    gw = await spawn(creds)
    async with http.get(gw.url("/readyz")) as ready:
        assert ready.status == 200, await ready.text()

    upstream.script(stream_over(2.0))
    async with http.post(
        gw.url(CHAT.format("alpha")), json=chat_body(stream=True), headers=bearer(creds.key)
    ) as resp:
        assert resp.status == 200, await resp.text()
        first = await resp.content.readline()
        assert first.startswith(b"event: chunk"), first

        sent = time.monotonic()
        gw.send(signal.SIGTERM)

        # Draining: /readyz fails at once (load balancers stop sending) while the
        # listener still accepts and requests are still answered.
        readyz: list[tuple[float, int | str, Any]] = []
        while time.monotonic() - sent < 0.45:
            try:
                async with http.get(gw.url("/readyz")) as probe:
                    readyz.append((time.monotonic() - sent, probe.status, await probe.json()))
            except aiohttp.ClientConnectionError as exc:
                readyz.append((time.monotonic() - sent, "connection failed", repr(exc)))
                break
            if probe.status == 503:
                break
            await asyncio.sleep(0.01)
        assert readyz, "no /readyz probe during the drain"
        assert readyz[-1][1] == 503, readyz
        body = readyz[-1][2]
        assert body["detail"] == "not ready", body
        assert body["checks"] == {"budget_store": "ok", "accepting": False}, body

        # After the drain window the listener closes: new connections are refused.
        while not await refused(gw.port):
            assert time.monotonic() - sent < 3, "the listener stayed open after the drain"
            await asyncio.sleep(0.02)
        assert time.monotonic() - sent >= 0.45, "the listener closed before the drain ended"
        assert not resp.content.at_eof(), "the stream should still be running here"

        # The stream in flight finishes normally.
        rest = (await resp.content.read()).decode()
    frames = sse_frames(first.decode() + rest)
    assert frames[-1] == ("[DONE]", "[DONE]"), frames[-3:]
    assert all(event != "error" for event, _ in frames), frames
    assert content_of(json_frames(frames)) == "".join(words(20, width=2))

    assert await gw.wait_exit(10) == 0
    counter = await month_counter(redis, creds)
    # The usage the upstream reported, priced (gpt-4o-mini: 150 / 600 nano-USD a token).
    assert counter == {
        "u0": PROMPT_TOKENS,
        "u1": 20,
        "u2": PROMPT_TOKENS + 20,
        "u3": PROMPT_TOKENS * 150 + 20 * 600,
        "r0": 0,
        "r1": 0,
        "r2": 0,
        "r3": 0,
    }
    assert await open_reservations(redis, creds) == 0


async def test_stream_past_the_grace_period_ends_with_a_shutdown_error_event(
    make_creds: MakeCreds,
    spawn: Spawn,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    creds = make_creds(limits={"drain_seconds": 0, "shutdown_grace_seconds": 1})
    gw = await spawn(creds)
    upstream.script(stream_over(10.0))
    async with http.post(
        gw.url(CHAT.format("alpha")), json=chat_body(stream=True), headers=bearer(creds.key)
    ) as resp:
        assert resp.status == 200, await resp.text()
        first = await resp.content.readline()
        assert first.startswith(b"event: chunk"), first
        sent = time.monotonic()
        gw.send(signal.SIGTERM)
        async with asyncio.timeout(8):
            rest, dropped = await read_rest(resp)
        ended = time.monotonic() - sent
    text = first.decode() + rest
    frames = sse_frames(text)
    errors = [json.loads(data) for event, data in frames if event == "error"]
    assert errors, f"no error event before the stream ended ({dropped}):\n{text[-600:]}"
    assert frames[-1][0] == "error", frames[-2:]  # the error event ends the stream
    error = errors[-1]
    assert error["type"] == "error"
    assert error["data"]["code"] == "gateway_shutdown", error
    assert error["error"]["code"] == "gateway_shutdown", error
    assert ("[DONE]", "[DONE]") not in frames
    assert PROVIDER_KEY not in text
    assert ended >= 0.9, f"the stream was cut {ended:.2f}s after SIGTERM, before its grace"

    assert await gw.wait_exit(10) == 0
    counter = await month_counter(redis, creds)
    # Settled before the process exited: nothing is left reserved, and the output the
    # upstream may have generated unseen is billed at the reserved ceiling.
    assert [counter[f"r{d}"] for d in range(4)] == [0, 0, 0, 0], counter
    assert counter["u0"] > 0, counter
    assert counter["u1"] == CEILING, counter
    assert counter["u2"] == counter["u0"] + CEILING, counter
    assert counter["u3"] > 0, counter
    assert await open_reservations(redis, creds) == 0


# ------------------------------------------------------------------------------ SIGHUP reload


def write_project(creds: Credentials, slug: str, project_id: str, **over: Any) -> None:
    alpha = yaml.safe_load((creds.config_dir / "projects" / "alpha.yaml").read_text())
    alpha.update(id=project_id, **over)
    (creds.config_dir / "projects" / f"{slug}.yaml").write_text(yaml.safe_dump(alpha))


def set_revoked(creds: Credentials, key_id: str, revoked: bool) -> None:
    def change(data: dict[str, Any]) -> None:
        for entry in data["orgs"]["acme"]["api_keys"]:
            if entry["id"] == key_id:
                entry["revoked"] = revoked

    edit_gateway_yaml(creds, change)


def set_unknown_key(creds: Credentials, present: bool) -> None:
    def change(data: dict[str, Any]) -> None:
        if present:
            data["bogus_setting"] = True
        else:
            data.pop("bogus_setting", None)

    edit_gateway_yaml(creds, change)


def is_msg(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record.get("msg") == text


async def test_sighup_reload_applies_rejects_and_spares_streams(
    make_creds: MakeCreds,
    spawn: Spawn,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    creds = make_creds(limits={})
    gw = await spawn(creds)
    delta_token = creds.session("delta", project_id="prj_delta")
    alpha, delta = gw.url(CHAT.format("alpha")), gw.url(CHAT.format("delta"))

    resp = await http.post(alpha, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    resp = await http.post(delta, json=chat_body(), headers=bearer(delta_token))
    assert resp.status == 404, await resp.text()

    # (a) a new project and a revoked key, applied by SIGHUP.
    write_project(creds, "delta", "prj_delta")
    set_revoked(creds, creds.key_id, True)
    gw.send(signal.SIGHUP)
    await gw.wait_log(is_msg("config reloaded"))
    resp = await http.post(delta, json=chat_body(), headers=bearer(delta_token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"] == "Hello there"
    sent = len(upstream.requests)
    resp = await http.post(alpha, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 401, await resp.text()
    assert await resp.json() == UNAUTHORIZED
    assert len(upstream.requests) == sent  # refused before anything went upstream

    # (b) an invalid config (unknown key) is rejected; the old one keeps serving. The
    # invalid file also un-revokes the key: that change must not be applied either.
    set_revoked(creds, creds.key_id, False)
    set_unknown_key(creds, True)
    gw.send(signal.SIGHUP)
    [rejected] = await gw.wait_log(is_msg("config reload rejected, keeping the previous config"))
    assert rejected["level"] == "error", rejected
    assert "bogus_setting" in json.dumps(rejected), rejected
    assert gw.proc is not None
    assert gw.proc.poll() is None, "the gateway died on an invalid reload"
    resp = await http.post(delta, json=chat_body(), headers=bearer(delta_token))
    assert resp.status == 200, await resp.text()
    resp = await http.post(alpha, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 401, await resp.text()
    assert len([r for r in gw.records() if r.get("msg") == "config reloaded"]) == 1

    # (c) a reload while a stream is in flight, one that even disables the project the
    # stream runs on: the stream completes unaffected and settles; new calls see 409.
    set_unknown_key(creds, False)
    set_revoked(creds, creds.key_id, True)
    write_project(creds, "alpha", "prj_alpha", enabled=False)
    alpha_token = creds.session("alpha")
    upstream.script(stream_over(1.5))
    before = await month_counter(redis, creds)
    async with http.post(alpha, json=chat_body(stream=True), headers=bearer(alpha_token)) as resp:
        assert resp.status == 200, await resp.text()
        first = await resp.content.readline()
        gw.send(signal.SIGHUP)
        await gw.wait_log(is_msg("config reloaded"), count=2)
        assert not resp.content.at_eof()  # the reload happened mid-stream
        rest = (await resp.content.read()).decode()
    frames = sse_frames(first.decode() + rest)
    assert frames[-1] == ("[DONE]", "[DONE]"), frames[-3:]
    assert all(event != "error" for event, _ in frames), frames
    assert content_of(json_frames(frames)) == "".join(words(20, width=2))
    resp = await http.post(alpha, json=chat_body(), headers=bearer(alpha_token))
    assert resp.status == 409, await resp.text()
    after = await settled(redis, creds, "month", until_used=True)
    assert after["u1"] - before["u1"] == 20, (before, after)
    assert after["u0"] - before["u0"] == PROMPT_TOKENS, (before, after)
    assert await open_reservations(redis, creds) == 0


# ------------------------------------------------------------------------ POST /admin/reload


async def test_admin_reload_endpoint(
    make_creds: MakeCreds, spawn: Spawn, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    creds = make_creds(limits={})
    admin = generate_key()
    add_api_key(creds, "key_admin", admin.prefix, admin.sha256, ["admin"])
    gw = await spawn(creds)
    url = gw.url("/admin/reload")
    delta = gw.url(CHAT.format("delta"))

    resp = await http.post(url)
    assert resp.status == 401, await resp.text()
    assert await resp.json() == UNAUTHORIZED
    assert resp.headers.get("WWW-Authenticate") == "Bearer"
    resp = await http.post(url, headers=bearer(generate_key().secret))
    assert resp.status == 401, await resp.text()

    # Every org credential, an org admin key included: gateway-wide operations are the
    # operator's (KARTA_OPERATOR_TOKEN).
    for credential in (admin.secret, creds.key, creds.read_key, creds.session("alpha")):
        resp = await http.post(url, headers=bearer(credential))
        assert resp.status == 403, await resp.text()
        body = await resp.json()
        assert set(body) == {"detail", "message"}, body
    resp = await http.post(delta, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 404, "nothing was reloaded by the refused calls"

    write_project(creds, "delta", "prj_delta")
    resp = await http.post(url, headers=bearer(OPERATOR_TOKEN))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["reloaded"] is True, body
    assert body["projects"] == 5, body  # alpha, beta, gamma, sleepy + delta
    resp = await http.post(delta, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()

    # Invalid: named in the answer, not applied (the key revocation in it is ignored).
    set_revoked(creds, creds.key_id, True)
    set_unknown_key(creds, True)
    resp = await http.post(url, headers=bearer(OPERATOR_TOKEN))
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    assert body["error"] == "config_invalid", body
    assert isinstance(body["problems"], list), body
    assert body["problems"], body
    assert any("bogus_setting" in json.dumps(p) for p in body["problems"]), body
    for problem in body["problems"]:
        assert set(problem) == {"file", "path", "reason"}, problem
    resp = await http.post(delta, json=chat_body(), headers=bearer(creds.key))
    assert resp.status == 200, await resp.text()
    assert gw.proc is not None
    assert gw.proc.poll() is None


# ---------------------------------------------------------------------------- --workers 2


async def requests_total(http: aiohttp.ClientSession, gw: GatewayProcess) -> float:
    async with http.get(gw.metrics_url) as resp:
        assert resp.status == 200
        return sample_sum(await resp.text(), "gateway_requests_total")


async def test_workers_share_the_port_restart_and_add_up_metrics(
    make_creds: MakeCreds, spawn: Spawn, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    creds = make_creds(limits={})
    gw = await spawn(creds, workers=2)
    alpha = gw.url(CHAT.format("alpha"))
    workers = await gw.wait_workers_listening(2)
    assert len(set(workers)) == 2
    # Before anything moved, every family is announced all the same (HELP and TYPE),
    # as a single process shows them: dashboards and alerts find their metrics.
    async with http.get(gw.metrics_url) as resp:
        fresh = families(await resp.text())
    for name in ("gateway_budget_rejections", "gateway_upstream_errors", "gateway_tokens"):
        assert name in fresh, sorted(fresh)

    async def serve(n: int) -> None:
        answers = await asyncio.gather(
            *(http.post(alpha, json=chat_body(), headers=bearer(creds.key)) for _ in range(n))
        )
        assert [a.status for a in answers] == [200] * n

    await serve(20)
    # Whichever worker answers the scrape, it reports what both served.
    scrapes = [await requests_total(http, gw) for _ in range(10)]
    assert scrapes == [20.0] * 10

    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    replacement = await gw.wait_workers_listening(1, exclude=tuple(workers))
    assert victim not in gw.worker_pids()
    assert len(gw.listening_workers()) == 2, gw.worker_pids()
    assert replacement[0] != victim

    await serve(10)
    scrapes = [await requests_total(http, gw) for _ in range(10)]
    # The killed worker's counts stay in the total: counters never go backwards.
    assert scrapes == [30.0] * 10

    gw.send(signal.SIGTERM)
    assert await gw.wait_exit(10) == 0
    assert gw.worker_pids() == []
