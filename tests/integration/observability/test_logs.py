"""The JSON logs of a real ``gateway serve`` process, driven through many paths.

One gateway subprocess is run once for the module (in its own thread and event loop,
with its own fake upstream): successes, every refusal, upstream failures whose
messages quote the provider key, a mid-stream error, a client leaving mid-stream and
a request body carrying a secret. The tests then read what it wrote on stderr and
what the clients received.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.credentials import generate_key
from tests.support.harness import (
    BYOK_KEY,
    PROVIDER_KEY,
    SESSION_SECRET,
    Credentials,
    bearer,
    chat_body,
    write_config,
)
from tests.support.process import GatewayProcess
from tests.support.sse import sse_frames
from tests.support.upstream import FakeUpstream, Reply, openai_error, openai_stream

# One gateway run serves every test of the module (a module fixture): one worker is to
# run them all (--dist loadgroup; on pytest 9.2 each worker running one of them makes
# its own run, pytest-xdist issue 1386: slower, as correct).
pytestmark = pytest.mark.xdist_group("logs")

CHAT = "/v1/projects/{}/chat/completions"
BODY_SECRET = "sk-proj-FAKEBODYSECRET-5f1e2d3c4b5a69788796a5b4"
MALFORMED_JWT = "eyJhbGciOiJIUzI1NiJ9.bm90LWpzb24tY2xhaW1zLXBheWxvYWQ.c2lnbmF0dXJlLWJ5dGVz"
CLIENT_REQUEST_ID = "client-req-0001"
LEVELS = {"debug", "info", "warning", "error", "critical"}
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@dataclass
class Call:
    name: str
    status: int
    headers: dict[str, str]  # names in lower case
    body: str
    stream: bool | None  # None: refused before the body was parsed
    admitted: bool = False  # reserved and answered 200 by the upstream: tokens are known

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")


@dataclass
class Run:
    creds: Credentials
    lines: list[str]
    calls: list[Call]
    secrets: dict[str, str]
    exit_code: int
    extra: dict[str, Any] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("msg") == "request"]

    def call(self, name: str) -> Call:
        return next(c for c in self.calls if c.name == name)


def lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): v for k, v in headers.items()}


def midstream_error_sse() -> bytes:
    """Two content chunks, then the provider's error frame quoting its key."""
    head = openai_stream(["one ", "two "], include_usage=False).split(b"\n\n")[:3]
    error = {
        "error": {
            "message": f"Incorrect API key provided: {PROVIDER_KEY}. Check your key.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    return b"\n\n".join(head) + b"\n\n" + f"data: {json.dumps(error)}\n\n".encode()


async def scenario(root: Path, redis_url: str) -> Run:
    upstream = FakeUpstream()
    await upstream.start()
    creds = write_config(
        root / "config",
        upstream.base_url,
        redis_url,
        projects={"tiny": {"budgets": {"project": {"month": {"total_tokens": 10}}}}},
    )
    gw = GatewayProcess(creds, root / "gateway.log")
    session_token = creds.session("alpha")
    unknown_key = generate_key().secret
    calls: list[Call] = []
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        await gw.start()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def call(
                name: str,
                project: str,
                body: Any,
                token: str | None,
                admitted: bool = False,
                parsed: bool = True,
                headers: dict[str, str] | None = None,
            ) -> Call:
                headers = dict(headers or {})
                if token is not None:
                    headers.update(bearer(token))
                async with http.post(gw.url(CHAT.format(project)), json=body, headers=headers) as r:
                    text = (await r.read()).decode(errors="replace")
                    stream = body.get("stream", False) if parsed else None
                    done = Call(name, r.status, lower(r.headers), text, stream, admitted)
                calls.append(done)
                return done

            await call(
                "unary_ok",
                "alpha",
                chat_body(),
                creds.key,
                admitted=True,
                headers={"X-Request-Id": CLIENT_REQUEST_ID},
            )
            await call("stream_ok", "alpha", chat_body(stream=True), session_token, admitted=True)
            await call("unknown_key_401", "alpha", chat_body(), unknown_key, parsed=False)
            await call("malformed_jwt_401", "alpha", chat_body(), MALFORMED_JWT, parsed=False)
            await call("no_credential_401", "alpha", chat_body(), None, parsed=False)
            await call("budget_402", "tiny", chat_body(), creds.key)
            await call("read_key_403", "alpha", chat_body(), creds.read_key, parsed=False)
            await call("unknown_project_404", "nope", chat_body(), creds.key, parsed=False)
            await call("invalid_body_422", "alpha", {"messages": []}, creds.key, parsed=False)

            upstream.script(
                Reply(
                    status=401,
                    json=openai_error(401, f"Incorrect API key provided: {PROVIDER_KEY}."),
                )
            )
            await call("upstream_401", "alpha", chat_body(), creds.key)
            upstream.script(
                Reply(status=500, json=openai_error(500, f"upstream broke; key={PROVIDER_KEY}"))
            )
            await call("upstream_500", "alpha", chat_body(), creds.key)
            upstream.script(Reply(sse=midstream_error_sse()))
            await call("midstream_error", "alpha", chat_body(stream=True), creds.key, admitted=True)
            await call(
                "body_secret",
                "alpha",
                chat_body(f"my api key is {BODY_SECRET}, keep it safe"),
                creds.key,
                admitted=True,
            )

            # A client that leaves mid-stream: the gateway answered 200, then lost it.
            slow = openai_stream([f"w{i:02d} " for i in range(40)])
            upstream.script(Reply(sse=slow, slice_size=97, delay_between_slices=0.05))
            resp = await http.post(
                gw.url(CHAT.format("alpha")),
                json=chat_body(stream=True),
                headers=bearer(creds.key),
            )
            first = await resp.content.readline()
            calls.append(
                Call(
                    "client_disconnect",
                    499,
                    lower(resp.headers),
                    first.decode(),
                    True,
                    admitted=True,
                )
            )
            resp.close()
            await upstream.wait_disconnect()
            await gw.wait_log(
                lambda r: r.get("msg") == "request" and r.get("request_id") == calls[-1].request_id
            )

        gw.send(signal.SIGTERM)
        exit_code = await gw.wait_exit(10)
    finally:
        gw.kill()
        await upstream.close()
    secrets = {
        "client API key": creds.key,
        "read-only API key": creds.read_key,
        "revoked API key": creds.revoked_key,
        "other org API key": creds.other_org_key,
        "unknown API key sent": unknown_key,
        "session token": session_token,
        "malformed JWT sent": MALFORMED_JWT,
        "provider key": PROVIDER_KEY,
        "BYOK provider key": BYOK_KEY,
        "session secret": SESSION_SECRET,
        "secret in a request body": BODY_SECRET,
    }
    return Run(creds, gw.log_lines(), calls, secrets, exit_code)


@pytest.fixture(scope="module")
def run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("logs")
    # Its own thread and event loop: the fake upstream lives there, independent of the
    # tests' loops.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, scenario(root, redis_url)).result(timeout=60)


# ------------------------------------------------------------------------------ the run


def test_the_scenario_got_the_expected_answers(run: Run) -> None:
    statuses = {c.name: c.status for c in run.calls}
    assert statuses == {
        "unary_ok": 200,
        "stream_ok": 200,
        "unknown_key_401": 401,
        "malformed_jwt_401": 401,
        "no_credential_401": 401,
        "budget_402": 402,
        "read_key_403": 403,
        "unknown_project_404": 404,
        "invalid_body_422": 422,
        "upstream_401": 422,  # the provider rejected the provider key: byok_key_rejected
        "upstream_500": 502,
        "midstream_error": 200,
        "body_secret": 200,
        "client_disconnect": 499,  # as logged: the client left after the 200
    }
    assert json.loads(run.call("upstream_401").body)["error"] == "byok_key_rejected"
    frames = sse_frames(run.call("midstream_error").body)
    assert frames[-1][0] == "error", frames
    assert json.loads(frames[-1][1])["data"]["code"] == "upstream_error"
    assert sse_frames(run.call("stream_ok").body)[-1] == ("[DONE]", "[DONE]")
    assert run.exit_code == 0


# ------------------------------------------------------------------------------ the format


def test_every_stderr_line_is_a_json_log_record(run: Run) -> None:
    assert run.lines
    bad = []
    for line in run.lines:
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(f"not JSON: {line!r}")
            continue
        if not isinstance(record, dict):
            bad.append(f"not an object: {line!r}")
            continue
        missing = [
            k for k in ("ts", "level", "logger", "msg") if not isinstance(record.get(k), str)
        ]
        if missing:
            bad.append(f"missing {missing}: {line!r}")
        elif not TS.match(record["ts"]) or record["level"] not in LEVELS:
            bad.append(f"bad ts or level: {line!r}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------- the access lines


def test_every_request_has_exactly_one_access_line_naming_its_request_id(run: Run) -> None:
    access = run.access()
    for c in run.calls:
        assert c.request_id, f"{c.name}: no X-Request-Id header"
        mine = [r for r in access if r.get("request_id") == c.request_id]
        assert len(mine) == 1, (c.name, mine)
    assert len(access) == len(run.calls), [r.get("request_id") for r in access]
    assert len({c.request_id for c in run.calls}) == len(run.calls)


def test_a_safe_client_request_id_is_kept_beside_the_gateways(run: Run) -> None:
    call = run.call("unary_ok")
    assert call.request_id != CLIENT_REQUEST_ID  # the gateway's id is its own
    assert call.headers["x-client-request-id"] == CLIENT_REQUEST_ID
    [record] = [r for r in run.access() if r.get("request_id") == call.request_id]
    assert record["client_request_id"] == CLIENT_REQUEST_ID
    others = [r for r in run.access() if r.get("request_id") != call.request_id]
    assert {r.get("client_request_id") for r in others} == {None}


def test_access_lines_carry_status_project_and_stream(run: Run) -> None:
    by_id = {r["request_id"]: r for r in run.access() if "request_id" in r}
    for c in run.calls:
        record = by_id[c.request_id]
        assert record["logger"] == "gateway.access", record
        assert record["level"] == "info", record
        assert record["status"] == c.status, (c.name, record)
        assert "project" in record, (c.name, record)
        assert isinstance(record.get("duration_ms"), int | float), (c.name, record)
        if c.stream is not None:
            assert record.get("stream") is c.stream, (c.name, record)
            assert record["project"] in ("alpha", "tiny"), (c.name, record)
            assert isinstance(record.get("overhead_ms"), int | float), (c.name, record)


def test_admitted_calls_log_tokens_and_overhead(run: Run) -> None:
    by_id = {r["request_id"]: r for r in run.access() if "request_id" in r}
    admitted = [c for c in run.calls if c.admitted]
    assert len(admitted) == 5
    for c in admitted:
        record = by_id[c.request_id]
        assert record["project"] == "alpha", (c.name, record)
        assert record["model"] == "default", (c.name, record)
        assert isinstance(record.get("input_tokens"), int), (c.name, record)
        assert isinstance(record.get("output_tokens"), int), (c.name, record)
        assert record["input_tokens"] > 0, (c.name, record)
        overhead = record.get("overhead_ms")
        assert isinstance(overhead, int | float), (c.name, record)
        assert 0 <= overhead <= record["duration_ms"], (c.name, record)
    # What the upstream reported is what is logged (the fake reports 11 in, 3 out).
    for name in ("unary_ok", "stream_ok", "body_secret"):
        record = by_id[run.call(name).request_id]
        assert (record["input_tokens"], record["output_tokens"]) == (11, 3), record
        assert record.get("estimated") is False, record
    # A client gone mid-stream: the unknown output is billed at the ceiling (100).
    record = by_id[run.call("client_disconnect").request_id]
    assert record["output_tokens"] == 100, record
    assert record.get("estimated") is True, record
    assert record.get("stream_outcome") == "client_disconnected", record
    assert by_id[run.call("midstream_error").request_id].get("stream_outcome") == "upstream_error"
    assert by_id[run.call("stream_ok").request_id].get("auth") == "session"
    assert by_id[run.call("unary_ok").request_id].get("auth") == "key"


# ------------------------------------------------------------------------------- no secrets


def test_no_log_line_holds_a_secret_or_a_traceback(run: Run) -> None:
    leaks = [
        f"{what} in: {line}"
        for line in run.lines
        for what, secret in (*run.secrets.items(), ("a Traceback", "Traceback"))
        if secret in line
    ]
    assert not leaks, "\n".join(leaks)
    # Nor the distinctive part of the provider key (a masked or cut copy).
    assert not [line for line in run.lines if "DO-NOT-LEAK" in line]


def test_no_response_holds_a_secret_or_a_traceback(run: Run) -> None:
    leaks = []
    for c in run.calls:
        texts = [c.body, *(f"{k}: {v}" for k, v in c.headers.items())]
        for what, secret in (*run.secrets.items(), ("a Traceback", "Traceback")):
            leaks += [f"{c.name}: {what} in {text[:300]!r}" for text in texts if secret in text]
        leaks += [f"{c.name}: provider key fragment" for text in texts if "DO-NOT-LEAK" in text]
    assert not leaks, "\n".join(leaks)
