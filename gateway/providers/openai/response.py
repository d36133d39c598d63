"""An OpenAI-compatible unary answer, pure: checked to be readable, its usage typed."""

from __future__ import annotations

from typing import Any

from gateway.providers.base import Completion
from gateway.usage import from_openai


def check_completion(completion: Any) -> dict[str, Any]:
    """A unary answer whose shape the handler can read, or ValueError."""
    if isinstance(completion, dict):
        choices = completion.get("choices")
        if isinstance(choices, list) and all(
            isinstance(c, dict) and isinstance(c.get("message") or {}, dict) for c in choices
        ):
            return completion
    raise ValueError("not a chat completion")


def translate_response(answer: Any) -> Completion:
    """The answer without its ``usage`` member, and that usage (None: none, or one the
    gateway cannot trust: see gateway.usage.from_openai); ValueError: not an answer."""
    completion = check_completion(answer)
    return completion, from_openai(completion.pop("usage", None))


def translate_embeddings(answer: Any) -> Completion:
    """An embeddings answer without its ``usage``, and that usage as input tokens only
    (None: none reported, or not a trustworthy count); ValueError: not an answer."""
    if not isinstance(answer, dict):
        raise ValueError("not an embeddings answer")
    data = answer.get("data")
    if not isinstance(data, list) or not all(
        isinstance(d, dict) and isinstance(d.get("embedding"), list | str) for d in data
    ):
        raise ValueError("not an embeddings answer")
    usage = answer.pop("usage", None)
    if isinstance(usage, dict):
        counted = from_openai({"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": 0})
        return answer, counted
    return answer, None
