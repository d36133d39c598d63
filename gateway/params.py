"""Which chat-completion parameters go upstream, pure: what is forwarded is what was
reserved.

A parameter reaches a provider only if the gateway understands it (validates it, and
either bounds what it adds to the input or cannot make the answer longer than the
clamped ceiling), or the operator allowed it for that provider (``extra_params``).
Anything else is refused with 422 naming it: forwarded verbatim, an unknown field can
override the output ceiling (llama.cpp's ``n_predict``, Ollama's ``options.num_predict``)
or grow the prompt beyond what the input bound counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.errors import ValidationFailed

# Validated by gateway.validation; counted in the input bound where they add to the
# prompt (messages, tools, functions, response_format, tool_choice); each one either
# cannot lengthen the answer or is overwritten by the gateway (max tokens, stream_options).
UNDERSTOOD = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "user",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "metadata",
        "service_tier",
        "modalities",
        "audio",
        "reasoning_effort",  # reasoning tokens are output tokens, within the ceiling
        "verbosity",
        "store",
        "safety_identifier",
        "prompt_cache_key",
    }
)

# stream_options members forwarded (when booleans); the gateway sets include_usage.
# vLLM's continuous_usage_stats gives the relay a running count (a floor to bill); none
# changes what is generated.
STREAM_OPTIONS = frozenset({"include_usage", "continuous_usage_stats", "include_obfuscation"})

# Fields that set or change the length of the answer on some OpenAI-compatible server
# (llama.cpp, Ollama, vLLM, TGI, Gemini's compatibility layer, legacy completions): the
# gateway alone sets the output length, so an operator cannot allow these either.
OUTPUT_LENGTH = frozenset(
    {
        "n_predict",
        "num_predict",
        "max_new_tokens",
        "max_length",
        "min_tokens",
        "min_new_tokens",
        "min_length",
        "ignore_eos",
        "max_output_tokens",
        "maxOutputTokens",
        "max_tokens_to_sample",
        "best_of",
        "options",  # Ollama's options object (num_predict, num_ctx, ...)
        "generation_config",
        "prediction",  # rejected predicted tokens are billed as output, beyond max_tokens
    }
)

# Messages-body fields the Anthropic translator writes: an extra parameter of that
# name would replace the translated value (and the clamped max_tokens with it).
ANTHROPIC_BODY = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
        "stream",
    }
)


def extra_param_problem(name: str, kind: str) -> str | None:
    """Why ``name`` cannot be an ``extra_params`` entry of a provider of this kind (None:
    it can)."""
    if name in UNDERSTOOD:
        return f"{name!r} is a parameter the gateway already understands and forwards"
    if name in OUTPUT_LENGTH:
        return f"{name!r} changes the answer's length, which only the gateway sets"
    if kind == "anthropic" and name in ANTHROPIC_BODY:
        return f"{name!r} is written by the gateway's translation to Anthropic's Messages body"
    return None


def refuse_unknown(body: Mapping[str, Any], allowed_extra: frozenset[str]) -> None:
    """422 naming the first body field that is neither understood nor allowed."""
    unknown = body.keys() - UNDERSTOOD
    if not unknown or unknown <= allowed_extra:
        return
    names = sorted(unknown - allowed_extra)
    why = (
        "changes the answer's length, which the gateway sets from the reserved ceiling"
        if names[0] in OUTPUT_LENGTH
        else "is not a parameter this gateway forwards"
    )
    listed = ", ".join(repr(n) for n in names)
    raise ValidationFailed(
        f"unknown parameter {listed}: {names[0]!r} {why}; only the parameters the gateway "
        "understands and bounds go upstream (an operator may allow others per provider: "
        "providers.<name>.extra_params)",
        names[0],
    )


def forwarded_extras(body: Mapping[str, Any], allowed_extra: Iterable[str]) -> dict[str, Any]:
    """The body's allowed extra parameters, as sent."""
    return {name: body[name] for name in allowed_extra if name in body}
