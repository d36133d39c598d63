"""Anthropic Messages upstreams: request (OpenAI chat body -> Messages body, headers),
response (a Messages answer -> chat.completion and Usage), stream (Messages SSE ->
chunks and Usage), adapter (the provider, its error statuses)."""

from gateway.providers.anthropic.adapter import AnthropicProvider, anthropic_error_for_status
from gateway.providers.anthropic.request import ANTHROPIC_VERSION, JSON_TOOL, translate_request
from gateway.providers.anthropic.response import (
    anthropic_usage,
    finish_reason,
    translate_response,
)
from gateway.providers.anthropic.stream import AnthropicStreamTranslator

__all__ = [
    "ANTHROPIC_VERSION",
    "JSON_TOOL",
    "AnthropicProvider",
    "AnthropicStreamTranslator",
    "anthropic_error_for_status",
    "anthropic_usage",
    "finish_reason",
    "translate_request",
    "translate_response",
]
