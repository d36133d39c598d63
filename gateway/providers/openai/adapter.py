"""OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, Groq, Together, ...).

The request is already OpenAI-shaped: the adapter sends it with the provider's key
(never the client's credential) through the shared transport, whose error mapping
(gateway.providers.transport.status_error) is OpenAI's.
"""

from __future__ import annotations

from typing import Any

import aiohttp

import gateway.providers.openai.request as openai_request
from gateway.config import ProviderConfig
from gateway.providers.base import AnswerTranslator, StreamTranslator, UpstreamRequest
from gateway.providers.openai.response import translate_embeddings, translate_response
from gateway.providers.openai.stream import OpenAIStreamTranslator
from gateway.providers.transport import HttpProvider


class OpenAIProvider(HttpProvider):
    def __init__(self, name: str, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(name, config, session)
        self.url_template = openai_request.url_template(config)
        self.embeddings_template = openai_request.embeddings_url_template(config)
        self.responses_template = openai_request.path_template(
            config, config.responses_path or "/responses"
        )
        self.params = config.query or None

    def url(self, request: UpstreamRequest) -> str:
        if request.operation == "embeddings":
            return openai_request.url(self.embeddings_template, request)
        if request.operation == "responses":
            return openai_request.url(self.responses_template, request)
        return openai_request.url(self.url_template, request)

    def headers(self, request: UpstreamRequest, stream: bool) -> dict[str, str]:
        return openai_request.headers(self.config, request)

    def payload(self, request: UpstreamRequest, stream: bool) -> dict[str, Any]:
        return request.body

    def answer_translator(self, request: UpstreamRequest) -> AnswerTranslator:
        if request.operation == "embeddings":
            return translate_embeddings
        return translate_response

    def stream_translator(self, request: UpstreamRequest) -> StreamTranslator:
        return OpenAIStreamTranslator(request.api_key)
