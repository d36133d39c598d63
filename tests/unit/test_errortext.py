"""The filter on what of a provider's error may reach the client (pure)."""

from __future__ import annotations

import base64

import pytest

from gateway.providers.errortext import provider_code, safe_code, safe_param

KEY = "sk-Zq8vR2mXk4LpT9wQ"


@pytest.mark.parametrize(
    "code",
    ["context_length_exceeded", "rate_limit_exceeded", "overloaded_error", "1214", "a.b-c_d"],
)
def test_word_shaped_codes_pass(code: str) -> None:
    assert safe_code(code, KEY) == code


@pytest.mark.parametrize(
    "code",
    [
        "",
        "Invalid_Key",  # upper case: text, not a code
        "has space",
        "a" * 65,  # over 64 characters
        "x" * 25,  # one "word" of 25: an encoding, not a word
        "_leading",
        "trailing-",
        KEY.lower(),
        "bad_" + KEY.lower()[3:9],  # six characters of the key
        KEY.encode().hex()[:40],
        base64.b64encode(KEY.encode()).decode().lower()[:20],
        base64.b32encode(KEY.encode()).decode().lower()[:20],
        None,
        42,
    ],
)
def test_anything_else_is_dropped(code: object) -> None:
    assert safe_code(code, KEY) is None


def test_params_pass_the_same_filter() -> None:
    assert safe_param("messages[0].content", KEY) == "messages[0].content"
    assert safe_param("max_tokens", KEY) == "max_tokens"
    assert safe_param("messages[0]." + KEY.lower()[3:12], KEY) is None
    assert safe_param("Messages", KEY) is None


def test_the_code_falls_back_to_the_type() -> None:
    assert provider_code({"code": None, "type": "invalid_request_error"}, KEY) == (
        "invalid_request_error"
    )
    assert provider_code({"code": KEY.lower(), "type": "server_error"}, KEY) == "server_error"
    assert provider_code("text", KEY) is None
