"""Every refusal, as the official openai Python SDK shows it, under both wire profiles.

The SDK's exception text is ``Error code: N - <message>``, where the message is the
body's ``error.message`` (an error object) or its top-level ``message``. Under the
``openai`` profile every body is OpenAI's error object; under ``karta`` the documented
bodies carry a ``message`` beside their ``detail``. The karta 402 and 422 bodies have a
string ``error`` member (their documented shape), which the SDK takes for the error
and finds no message in: their reason is in the body only (README, Errors).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import openai
import pytest

from tests.support.harness import Gateway, GatewayFactory, SdkFactory, provider_entry
from tests.support.ports import free_port
from tests.support.upstream import FakeUpstream, Reply, openai_error

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
PROFILES = ["karta", "openai"]
# Statuses whose karta body cannot put its reason in the SDK's exception text.
KARTA_BODY_ONLY = {402, 422}


def projects(profile: str) -> dict[str, dict[str, Any]]:
    return {
        "main": {"wire_profile": profile},
        # Worst case of chat_body() is 33 input + 100 output = 133 tokens.
        "capped": {
            "wire_profile": profile,
            "budgets": {"project": {"day": {"total_tokens": 100}}},
        },
        "limited": {"wire_profile": profile, "rate_limits": {"requests_per_minute": 1}},
        "off": {"wire_profile": profile, "enabled": False},
    }


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: FakeUpstream, profile: str) -> Gateway:
    return await make_gateway(
        projects=projects(profile),
        gateway={
            "wire_profile": profile,
            "limits": {"max_body_bytes": 4096, "reservation_ttl_seconds": 60},
            "providers": {"upstream": provider_entry(upstream.base_url, total=0.5)},
        },
    )


async def refused(call: Awaitable[Any]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        await call
    return info.value


def assert_reads(exc: openai.APIStatusError, status: int, reason: str, profile: str) -> None:
    """The SDK's exception names the status and carries ``reason`` in its text (or, for
    the karta 402/422, in the body's message)."""
    assert exc.status_code == status, exc
    body = exc.response.json()
    if profile == "openai":
        assert set(body) == {"error"}, body
        error = body["error"]
        assert {"message", "type", "param", "code"} <= set(error), error
        assert isinstance(error["type"], str)
        assert isinstance(error["code"], str)
        assert exc.code == error["code"]
        assert reason in error["message"], body
        assert str(exc) == f"Error code: {status} - {error['message']}"
        assert reason in str(exc)
    elif status in KARTA_BODY_ONLY:
        assert str(exc) == f"Error code: {status}"
        assert reason in body["message"], body
    else:
        assert reason in body["message"], body
        assert reason in str(exc), str(exc)
        if "detail" in body:
            assert set(body) >= {"detail", "message"}


def create(api: openai.AsyncOpenAI, **extra: Any) -> Awaitable[Any]:
    return api.chat.completions.create(model="default", messages=MESSAGES, **extra)


async def test_401(gw: Gateway, sdk: SdkFactory, profile: str) -> None:
    client, _, _ = gw
    exc = await refused(create(sdk(client, "kt_live_" + "A" * 32, "main")))
    assert isinstance(exc, openai.AuthenticationError)
    assert_reads(exc, 401, "Authorization: Bearer", profile)


async def test_402_says_which_max_tokens_fits_and_that_one_does(
    gw: Gateway, sdk: SdkFactory, profile: str, upstream: FakeUpstream
) -> None:
    client, _, creds = gw
    api = sdk(client, creds.key, "capped")
    exc = await refused(create(api))
    assert_reads(exc, 402, "daily total_tokens cap would be exceeded", profile)
    body = exc.response.json()
    details = body["error"] if profile == "openai" else body
    assert details["code" if profile == "openai" else "error"] == "budget_exhausted"
    assert (details["limit"], details["used"], details["requested"]) == (100, 0, 133)
    assert details["max_tokens_fit"] == 67
    assert "a request with max_tokens <= 67 fits now" in details["message"]
    assert "resets at" in details["message"]
    assert upstream.requests == []
    # The hint is true: that max_tokens is admitted; one more is not.
    assert (await refused(create(api, max_tokens=68))).status_code == 402
    done = await create(api, max_tokens=67)
    assert done.choices[0].message.content


async def test_403(gw: Gateway, sdk: SdkFactory, profile: str) -> None:
    client, _, creds = gw
    exc = await refused(create(sdk(client, creds.read_key, "main")))
    assert isinstance(exc, openai.PermissionDeniedError)
    assert_reads(exc, 403, "lacks the 'write' scope", profile)


async def test_404_unknown_project_and_model(gw: Gateway, sdk: SdkFactory, profile: str) -> None:
    client, _, creds = gw
    exc = await refused(create(sdk(client, creds.key, "nowhere")))
    assert isinstance(exc, openai.NotFoundError)
    assert_reads(exc, 404, "project not found", profile)
    exc = await refused(
        sdk(client, creds.key, "main").chat.completions.create(model="nope", messages=MESSAGES)
    )
    assert_reads(exc, 404, "model 'nope' is not configured", profile)


async def test_404_unknown_endpoint_names_the_served_ones(
    gw: Gateway, sdk: SdkFactory, profile: str
) -> None:
    client, _, creds = gw
    api = sdk(client, creds.key, "main")
    exc = await refused(api.post("/no-such-endpoint", cast_to=object, body={}))
    assert_reads(exc, 404, "this gateway has no such endpoint", profile)
    assert "POST /v1/projects/{project_ref}/chat/completions" in str(exc)
    assert "no-such-endpoint" not in str(exc)  # nothing of the request is echoed


async def test_409(gw: Gateway, sdk: SdkFactory, profile: str) -> None:
    client, _, creds = gw
    exc = await refused(create(sdk(client, creds.key, "off")))
    assert isinstance(exc, openai.ConflictError)
    assert_reads(exc, 409, "project is disabled", profile)


async def test_413(gw: Gateway, sdk: SdkFactory, profile: str) -> None:
    client, _, creds = gw
    big: list[Any] = [{"role": "user", "content": "x" * 8000}]
    exc = await refused(
        sdk(client, creds.key, "main").chat.completions.create(model="default", messages=big)
    )
    assert_reads(exc, 413, "over 4096 bytes (limits.max_body_bytes)", profile)


async def test_422(gw: Gateway, sdk: SdkFactory, profile: str) -> None:
    client, _, creds = gw
    exc = await refused(create(sdk(client, creds.key, "main"), temperature=7))
    assert isinstance(exc, openai.UnprocessableEntityError)
    assert_reads(exc, 422, "temperature", profile)
    if profile == "openai":
        assert exc.param == "temperature"


async def test_429(gw: Gateway, sdk: SdkFactory, profile: str) -> None:
    client, _, creds = gw
    api = sdk(client, creds.key, "limited")
    await create(api)
    exc = await refused(create(api))
    assert isinstance(exc, openai.RateLimitError)
    assert_reads(exc, 429, "requests per minute limit (1) reached", profile)
    assert exc.response.headers["Retry-After"]


async def test_502(gw: Gateway, sdk: SdkFactory, profile: str, upstream: FakeUpstream) -> None:
    client, _, creds = gw
    upstream.script(Reply(status=500, json=openai_error(500, "boom")))
    exc = await refused(create(sdk(client, creds.key, "main")))
    assert isinstance(exc, openai.InternalServerError)
    assert_reads(exc, 502, "provider upstream failed", profile)


async def test_504(gw: Gateway, sdk: SdkFactory, profile: str, upstream: FakeUpstream) -> None:
    client, _, creds = gw
    upstream.script(Reply(json={"late": True}, delay_before_headers=2.0))
    exc = await refused(create(sdk(client, creds.key, "main")))
    assert_reads(exc, 504, "provider upstream timed out", profile)


async def test_503(make_gateway: GatewayFactory, sdk: SdkFactory, profile: str) -> None:
    client, _, creds = await make_gateway(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        projects=projects(profile),
        gateway={"wire_profile": profile},
    )
    exc = await refused(create(sdk(client, creds.key, "main")))
    assert_reads(exc, 503, "budget store unavailable", profile)
    assert exc.response.headers["Retry-After"]
