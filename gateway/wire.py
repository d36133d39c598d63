"""Wire profiles, pure: how answers look to clients.

``karta`` (default): named SSE events (``event: chunk`` / ``event: [DONE]``), usage
with both the documented and the OpenAI names, unary ``object`` "text_completion",
and an error event whose ``error`` member makes the OpenAI SDKs raise.
``openai``: exactly OpenAI's format (data-only frames, OpenAI usage names), for
old SDKs that break on named events.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.sse import encode_event
from gateway.usage import Usage

DONE_OPENAI = b"data: [DONE]\n\n"
DONE_KARTA = b"event: [DONE]\ndata: [DONE]\n\n"


def _usage_openai(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": _prompt_details(usage),
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _prompt_details(usage: Usage) -> dict[str, int]:
    details = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_creation_input_tokens:
        details["cache_creation_tokens"] = usage.cache_creation_input_tokens
    return details


def _usage_karta(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "prompt_tokens_details": _prompt_details(usage),
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class WireProfile:
    """Encodes unary bodies, stream chunks, the end of stream and error events."""

    name = "openai"
    unary_object = "chat.completion"

    def usage(self, usage: Usage) -> dict[str, Any]:
        return _usage_openai(usage)

    def unary(
        self, completion: dict[str, Any], gateway_id: str, alias: str, usage: Usage
    ) -> dict[str, Any]:
        body = dict(completion)
        body["id"] = gateway_id
        body["object"] = self.unary_object
        body["model"] = alias
        body["usage"] = self.usage(usage)
        return body

    def frame(self, data: bytes) -> bytes:
        return b"data: " + data + b"\n\n"

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        # The stream relay frames chunks with frame()'s parts directly: a profile
        # changes frame(), never this.
        return self.frame(orjson.dumps(chunk))

    def usage_chunk(self, gateway_id: str, created: int, alias: str, usage: Usage) -> bytes:
        return self.chunk(
            {
                "id": gateway_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": alias,
                "choices": [],
                "usage": self.usage(usage),
            }
        )

    def done(self) -> bytes:
        return DONE_OPENAI

    def error_event(self, code: str, provider: str, message: str) -> bytes:
        return self.frame(
            orjson.dumps(
                {"error": {"message": message, "type": code, "code": code, "provider": provider}}
            )
        )


class KartaProfile(WireProfile):
    name = "karta"
    unary_object = "text_completion"

    def usage(self, usage: Usage) -> dict[str, Any]:
        return _usage_karta(usage)

    def frame(self, data: bytes) -> bytes:
        return b"event: chunk\ndata: " + data + b"\n\n"

    def done(self) -> bytes:
        return DONE_KARTA

    def error_event(self, code: str, provider: str, message: str) -> bytes:
        payload = {
            "type": "error",
            "data": {"code": code, "provider": provider, "message": message},
            "error": {"message": message, "type": code, "code": code},
        }
        return encode_event(orjson.dumps(payload), "error")


PROFILES: dict[str, WireProfile] = {"openai": WireProfile(), "karta": KartaProfile()}
