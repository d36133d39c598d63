"""The built-in offline provider: answers (what it says, pure), schema (a value for a
JSON schema, pure), adapter (OpenAI shapes, streamed with small delays)."""

from gateway.providers.demo.adapter import DemoProvider

__all__ = ["DemoProvider"]
