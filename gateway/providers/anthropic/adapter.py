"""Anthropic Messages API upstreams (``POST {base_url}/messages``): the translations
(request, response, stream) run over the shared transport, with Anthropic's own
statuses added to its error mapping.
"""

from __future__ import annotations

from typing import Any

import aiohttp

import gateway.providers.anthropic.request as anthropic_request
from gateway.config import ProviderConfig
from gateway.errors import GatewayError, UpstreamFailed, ValidationFailed
from gateway.providers.anthropic.response import translate_response
from gateway.providers.anthropic.stream import AnthropicStreamTranslator
from gateway.providers.base import AnswerTranslator, StreamTranslator, UpstreamRequest
from gateway.providers.transport import HttpProvider, status_error
from gateway.validation import asks_for_json


def anthropic_error_for_status(
    provider: str, status: int, body: bytes, headers: Any, secret: str = ""
) -> GatewayError:
    """Like the OpenAI mapping (the error body has the same ``error.message``), plus
    Anthropic's 413 (request too large) and 529 (overloaded)."""
    if status == 413:
        return ValidationFailed(f"provider {provider}: the request is too large", None)
    if status == 529:
        return UpstreamFailed.detail(f"provider {provider} is overloaded (HTTP 529)")
    return status_error(provider, status, body, headers, secret)


class AnthropicProvider(HttpProvider):
    def __init__(self, name: str, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(name, config, session)
        self.messages_url = config.base_url.rstrip("/") + "/messages"

    def url(self, request: UpstreamRequest) -> str:
        if request.operation == "count_tokens":
            return self.messages_url + "/count_tokens"
        return self.messages_url

    def headers(self, request: UpstreamRequest, stream: bool) -> dict[str, str]:
        return anthropic_request.headers(self.config, request, stream)

    def payload(self, request: UpstreamRequest, stream: bool) -> dict[str, Any]:
        if request.operation == "count_tokens":
            return dict(request.body)
        if request.operation == "messages":  # a Messages body, passed through natively
            body = dict(request.body)
            if stream:
                body["stream"] = True
            else:
                body.pop("stream", None)
            return body
        if request.operation != "chat":  # config load refuses embedding aliases here
            raise ValidationFailed("an anthropic provider serves no embeddings", "model")
        return anthropic_request.payload(request, self.config, stream)

    def answer_translator(self, request: UpstreamRequest) -> AnswerTranslator:
        json_answer = asks_for_json(request.body)
        return lambda message: translate_response(message, json_answer=json_answer)

    def stream_translator(self, request: UpstreamRequest) -> StreamTranslator:
        return AnthropicStreamTranslator(
            secret=request.api_key, json_answer=asks_for_json(request.body)
        )

    def error_for_status(
        self, status: int, body: bytes, headers: Any, api_key: str
    ) -> GatewayError:
        return anthropic_error_for_status(self.name, status, body, headers, api_key)
