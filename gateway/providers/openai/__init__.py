"""OpenAI-compatible upstreams: request (URL, headers), response (a unary answer),
stream (SSE to chunks and usage), adapter (the provider)."""

from gateway.providers.openai.adapter import OpenAIProvider
from gateway.providers.openai.response import check_completion, translate_response
from gateway.providers.openai.stream import OpenAIStreamTranslator

__all__ = ["OpenAIProvider", "OpenAIStreamTranslator", "check_completion", "translate_response"]
