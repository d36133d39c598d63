"""What of a provider's error reaches the client: never its text, at most its code.

Providers quote keys in their error messages (whole, masked, cut), and a hostile or
broken upstream can echo one in any form: upper-cased, base64, split across fields.
No redaction of free text catches every form, so none is relayed: the gateway says
what happened in a fixed sentence per status, and adds the provider's error code and
the parameter it names only when each passes a strict filter (:func:`safe_code`,
:func:`safe_param`): short, lowercase, word-shaped, and sharing no
``FRAGMENT``-character run with the key in any of the forms checked.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

MAX_CODE = 64
# A word of a code ("context", "length", "exceeded"): longer runs are encodings, not words.
MAX_WORD = 24
# A code or param sharing this many consecutive characters with the key is dropped.
FRAGMENT = 6
_CODE = re.compile(r"[a-z0-9]+(?:[_.-][a-z0-9]+)*")
_PARAM = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*|\[[0-9]{1,4}\])*")
_WORD_SPLIT = re.compile(r"[_.\-\[\]]+")


def _key_forms(secret: str) -> list[str]:
    """The key as a lowercase code could spell it: plain, hex, base64, base32."""
    raw = secret.encode()
    forms = [
        secret,
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b32encode(raw).decode(),
    ]
    return [form.lower() for form in forms]


def _shares_key(value: str, secret: str) -> bool:
    if not secret:
        return False
    runs = {value[i : i + FRAGMENT] for i in range(max(len(value) - FRAGMENT + 1, 1))}
    return any(run in form for form in _key_forms(secret) for run in runs)


def _word_shaped(value: str) -> bool:
    return all(len(word) <= MAX_WORD for word in _WORD_SPLIT.split(value))


def safe_code(value: Any, secret: str) -> str | None:
    """``value`` if it may be relayed as an error code (``^[a-z0-9_.-]{1,64}$``, made
    of short words, nothing of the key), else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CODE:
        return None
    if not _CODE.fullmatch(value) or not _word_shaped(value) or _shares_key(value, secret):
        return None
    return value


def safe_param(value: Any, secret: str) -> str | None:
    """``value`` if it may be relayed as the request parameter an error names
    (``messages[0].content``), else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CODE:
        return None
    if not _PARAM.fullmatch(value) or not _word_shaped(value) or _shares_key(value, secret):
        return None
    return value


def error_fields(body: bytes) -> dict[str, Any]:
    """The error object of a provider's error body (OpenAI's ``{"error": {...}}``,
    Anthropic's ``{"type": "error", "error": {...}}``); {} when there is none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def provider_code(error: Any, secret: str) -> str | None:
    """The error's code (OpenAI's ``code``, else its or Anthropic's ``type``), if safe."""
    if not isinstance(error, dict):
        return None
    return safe_code(error.get("code"), secret) or safe_code(error.get("type"), secret)


def with_code(sentence: str, code: str | None) -> str:
    """``sentence``, naming the provider's code when there is one."""
    return f"{sentence} ({code})" if code else sentence
