"""Anthropic Messages API surface, request side, pure: a Messages create body in, the
gateway's OpenAI chat-completions body out.

:func:`parse_request` validates a ``POST /v1/messages`` body and translates it into a
chat body that :func:`gateway.validation.validate_chat_request` and
:func:`gateway.params.refuse_unknown` accept. What a chat route cannot carry is kept on
the :class:`MessagesRequest` for a route to an Anthropic upstream (``body``, the Messages
body as received): prompt-caching marks (they change the cost, not the answer) and
earlier turns' thinking blocks (signed reasoning no chat model can read) are dropped
from the chat body; ``top_k`` and the efforts chat models lack are in ``native_only``,
which :meth:`MessagesRequest.refuse_for_chat` refuses.
What no route here can honour is refused with ValidationFailed (422) naming the field:
server and Anthropic-defined tools and ``mcp_servers`` (priced apart from tokens),
``container``, documents other than base64 PDFs and plain text, unknown fields.

The answers (stream encoder, unary message, error bodies) are in
:mod:`gateway.surfaces.messages_answer`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from gateway.config import LimitsConfig
from gateway.errors import ValidationFailed
from gateway.surfaces.messages_answer import (
    MessagesStream,
    anthropic_usage,
    error_body,
    error_type,
    stop_reason,
    unary_message,
)
from gateway.usage import UnboundedInput, input_token_bound

__all__ = [
    "EFFORT_BY_BUDGET",
    "MessagesRequest",
    "MessagesStream",
    "anthropic_usage",
    "count_tokens_estimate",
    "error_body",
    "error_type",
    "parse_count_tokens",
    "parse_request",
    "stop_reason",
    "unary_message",
]

# Top-level fields of a Messages create body this surface reads; any other is refused.
CREATE_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "cache_control",
        "output_config",
    }
)
# ``POST /v1/messages/count_tokens`` takes the prompt side only.
COUNT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
    }
)
# Fields whose cost is not tokens: refused with their own reason, not as unknown.
_PRICED_APART = (
    "is priced apart from tokens (per use, per hour, or through prompts and tools "
    "Anthropic adds), which this gateway cannot bound or bill"
)
_PRICED_APART_FIELDS = {
    "mcp_servers": "MCP servers (mcp_servers)",
    "container": "code execution containers (container)",
}
# thinking.budget_tokens -> the chat reasoning_effort: below the first bound "low",
# below the second "medium", else "high". Chat APIs take an effort, not a budget: the
# bounds are this gateway's choice (Anthropic's least budget is 1,024), and either way
# the reasoning stays within max_tokens, which bounds what is billed.
EFFORT_BY_BUDGET: tuple[tuple[int, str], ...] = ((4096, "low"), (16384, "medium"))
_CHAT_EFFORTS = frozenset({"low", "medium", "high"})
_NATIVE_EFFORTS = frozenset({"xhigh", "max"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_SERVICE_TIERS = {"auto": "auto", "standard_only": "default"}
_MAX_STOP = 4  # the chat API's limit (Anthropic allows more)
DEFAULT_IMAGE_BOUND: int = LimitsConfig.model_fields["image_token_bound"].default


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """A validated Messages request and its chat-completions translation.

    ``chat_body``: what the chat pipeline runs (any route). ``body``: the Messages body
    as received, for a route to an Anthropic upstream. ``native_only``: parameter ->
    why only such a route honours it (a chat route must refuse: ``refuse_for_chat``).
    ``dropped``: where the chat body lost something that only changes cost (cache
    marks) or that chat models cannot read (earlier turns' thinking);
    ``dropped_input_bytes``: the UTF-8 bytes of that thinking, for token bounds.
    ``anthropic_version`` / ``anthropic_beta``: the client's headers (betas split on
    commas), for the route to forward or not.
    """

    chat_body: dict[str, Any]
    body: dict[str, Any]
    model: str
    max_tokens: int | None
    stream: bool
    anthropic_version: str | None = None
    anthropic_beta: tuple[str, ...] = ()
    native_only: dict[str, str] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    dropped_input_bytes: int = 0

    def refuse_for_chat(self) -> None:
        """ValidationFailed naming the first parameter only an Anthropic route honours."""
        for param, why in self.native_only.items():
            raise ValidationFailed(f"{param} {why}", param)


def _invalid(message: str, param: str | None) -> ValidationFailed:
    return ValidationFailed(message, param)


def _at(where: str, key: str) -> str:
    """The path of ``key`` inside ``where`` (``""``: the body itself)."""
    return f"{where}.{key}" if where else key


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be an object", where)
    return value


def _unknown(obj: Mapping[str, Any], allowed: frozenset[str]) -> list[str]:
    """Members outside ``allowed``, sorted. A null member counts as absent: clients echo
    earlier answers' blocks with every unset field as null (``toolset_name: null``)."""
    return sorted(name for name, value in obj.items() if name not in allowed and value is not None)


def _only(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    """422 naming the first member of ``obj`` outside ``allowed``."""
    unknown = _unknown(obj, allowed)
    if unknown:
        name = _at(where, unknown[0])
        raise _invalid(f"unknown parameter {name!r}: not supported by this gateway", name)


def _string(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _invalid(f"{where}.{key} must be a string", f"{where}.{key}")
    return value


class _Translation:
    """The state of one body's translation: what was dropped or kept for native routes."""

    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.dropped_bytes = 0
        self.native_only: dict[str, str] = {}

    # ------------------------------------------------------------------ marks

    def cache_control(self, value: Any, where: str) -> None:
        if value is None:
            return
        at = _at(where, "cache_control")
        mark = _object(value, at)
        _only(mark, frozenset({"type", "ttl"}), at)
        if mark.get("type") != "ephemeral":
            raise _invalid(f'{at}.type must be "ephemeral"', f"{at}.type")
        ttl = mark.get("ttl")
        if ttl is not None and ttl not in ("5m", "1h"):
            raise _invalid(f'{at}.ttl must be "5m" or "1h"', f"{at}.ttl")
        # Caching changes what a prompt costs, never the answer: chat routes cache by
        # themselves (or not); an Anthropic route reads the mark from the body.
        self.dropped.append(at)

    # ------------------------------------------------------------------ blocks

    def text(self, block: dict[str, Any], where: str) -> str:
        _only(block, frozenset({"type", "text", "cache_control", "citations"}), where)
        text = _string(block, "text", where)
        assert text is not None
        self.cache_control(block.get("cache_control"), where)
        citations = block.get("citations")
        if citations:
            # Citations of an earlier answer: their text is in the block already.
            self.dropped.append(f"{where}.citations")
        return text

    def image(self, block: dict[str, Any], where: str) -> dict[str, Any]:
        _only(block, frozenset({"type", "source", "cache_control"}), where)
        self.cache_control(block.get("cache_control"), where)
        source = _object(block.get("source"), f"{where}.source")
        kind = source.get("type")
        swhere = f"{where}.source"
        if kind == "base64":
            _only(source, frozenset({"type", "media_type", "data"}), swhere)
            media_type = _string(source, "media_type", swhere)
            if media_type not in _IMAGE_TYPES:
                raise _invalid(
                    f"{swhere}.media_type must be one of {sorted(_IMAGE_TYPES)}",
                    f"{swhere}.media_type",
                )
            data = _string(source, "data", swhere)
            url = f"data:{media_type};base64,{data}"
        elif kind == "url":
            _only(source, frozenset({"type", "url"}), swhere)
            url = _string(source, "url", swhere) or ""
            if not url.startswith(("https://", "http://")):
                raise _invalid(f"{swhere}.url must be an http(s) URL", f"{swhere}.url")
        else:
            raise _invalid(
                f'{swhere}.type must be "base64" or "url" (uploaded files are not supported)',
                f"{swhere}.type",
            )
        return {"type": "image_url", "image_url": {"url": url}}

    def document(self, block: dict[str, Any], where: str) -> dict[str, Any]:
        """A base64 PDF as a chat ``file`` part; a plain-text document as a text part."""
        _only(
            block,
            frozenset({"type", "source", "title", "context", "citations", "cache_control"}),
            where,
        )
        self.cache_control(block.get("cache_control"), where)
        citations = block.get("citations")
        if isinstance(citations, dict) and citations.get("enabled"):
            raise _invalid(
                "citations are not supported: chat routes cannot cite documents",
                f"{where}.citations",
            )
        source = _object(block.get("source"), f"{where}.source")
        swhere = f"{where}.source"
        kind = source.get("type")
        media_type = source.get("media_type")
        title = block.get("title")
        if title is not None and not isinstance(title, str):
            raise _invalid(f"{where}.title must be a string", f"{where}.title")
        if block.get("context") is not None:
            _string(block, "context", where)
        if kind == "base64" and media_type == "application/pdf":
            _only(source, frozenset({"type", "media_type", "data"}), swhere)
            data = _string(source, "data", swhere)
            return {
                "type": "file",
                "file": {
                    "filename": title or "document.pdf",
                    "file_data": f"data:application/pdf;base64,{data}",
                },
            }
        if kind == "text" and media_type == "text/plain":
            _only(source, frozenset({"type", "media_type", "data"}), swhere)
            data = _string(source, "data", swhere) or ""
            heading = [title] if title else []
            if block.get("context"):
                heading.append(block["context"])
            return {"type": "text", "text": "\n\n".join([*heading, data])}
        raise _invalid(
            "documents must be base64 PDFs (application/pdf) or plain text (text/plain); "
            "URL, file and content sources are not supported",
            swhere,
        )

    def tool_result(
        self, block: dict[str, Any], where: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A tool message, and the result's images and documents (chat tool messages
        carry text only: those go to a user message right after the tool messages)."""
        _only(
            block, frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}), where
        )
        call_id = _string(block, "tool_use_id", where)
        self.cache_control(block.get("cache_control"), where)
        is_error = block.get("is_error")
        if is_error is not None and not isinstance(is_error, bool):
            raise _invalid(f"{where}.is_error must be a boolean", f"{where}.is_error")
        content = block.get("content")
        texts: list[str] = []
        media: list[dict[str, Any]] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                pwhere = f"{where}.content[{j}]"
                part = _object(part, pwhere)
                kind = part.get("type")
                if kind == "text":
                    texts.append(self.text(part, pwhere))
                elif kind == "image":
                    media.append(self.image(part, pwhere))
                elif kind == "document":
                    media.append(self.document(part, pwhere))
                else:
                    raise _invalid(
                        f"{pwhere}.type must be text, image or document in a tool result",
                        f"{pwhere}.type",
                    )
        elif content is not None:
            raise _invalid(
                f"{where}.content must be a string or an array of blocks", f"{where}.content"
            )
        text = "\n".join(t for t in texts if t)
        if is_error:
            # Chat tool messages have no error flag: the model reads it in the text.
            text = f"Error: {text}" if text else "Error"
        return {"role": "tool", "tool_call_id": call_id, "content": text}, media

    def tool_use(self, block: dict[str, Any], where: str) -> dict[str, Any]:
        _only(block, frozenset({"type", "id", "name", "input", "cache_control", "caller"}), where)
        self.cache_control(block.get("cache_control"), where)
        call_id = _string(block, "id", where)
        name = _string(block, "name", where)
        arguments = _object(block.get("input", {}), f"{where}.input")
        caller = block.get("caller")
        if caller is not None and (not isinstance(caller, dict) or caller.get("type") != "direct"):
            # Called from code execution (programmatic tool calling): a server tool's turn.
            raise _invalid(
                f'{where}.caller must be {{"type": "direct"}}: calls made by server tools '
                "are not supported",
                f"{where}.caller",
            )
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
        }

    def thinking(self, block: dict[str, Any], where: str) -> None:
        kind = block["type"]
        if kind == "thinking":
            _only(block, frozenset({"type", "thinking", "signature"}), where)
            text = _string(block, "thinking", where) or ""
            _string(block, "signature", where, required=False)
        else:
            _only(block, frozenset({"type", "data"}), where)
            text = _string(block, "data", where) or ""
        # Chat models cannot read another model's signed reasoning; an Anthropic route
        # sends it back from the body (its tool-use loops need it).
        self.dropped.append(where)
        self.dropped_bytes += len(text.encode("utf-8", "surrogatepass"))

    # ------------------------------------------------------------------ turns

    def user(self, content: Any, where: str) -> list[dict[str, Any]]:
        """One user turn as chat messages: its tool results first (tool messages must
        follow the assistant's tool calls), then its other content as one user message."""
        if isinstance(content, str):
            return [{"role": "user", "content": content}]
        tools: list[dict[str, Any]] = []
        result_parts: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            bwhere = f"{where}.content[{j}]"
            block = _object(block, bwhere)
            kind = block.get("type")
            if kind == "text":
                text = self.text(block, bwhere)
                if text:
                    parts.append({"type": "text", "text": text})
            elif kind == "image":
                parts.append(self.image(block, bwhere))
            elif kind == "document":
                parts.append(self.document(block, bwhere))
            elif kind == "tool_result":
                message, media = self.tool_result(block, bwhere)
                tools.append(message)
                result_parts.extend(media)
            else:
                raise _invalid(
                    f"{bwhere}.type {kind!r} is not supported in user turns "
                    "(text, image, document, tool_result)",
                    f"{bwhere}.type",
                )
        out = list(tools)
        if result_parts or parts:
            out.append({"role": "user", "content": result_parts + parts})
        return out

    def assistant(self, content: Any, where: str) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return [{"role": "assistant", "content": content}] if content else []
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            bwhere = f"{where}.content[{j}]"
            block = _object(block, bwhere)
            kind = block.get("type")
            if kind == "text":
                text = self.text(block, bwhere)
                if text:
                    texts.append(text)
            elif kind == "tool_use":
                calls.append(self.tool_use(block, bwhere))
            elif kind in ("thinking", "redacted_thinking"):
                self.thinking(block, bwhere)
            else:
                raise _invalid(
                    f"{bwhere}.type {kind!r} is not supported in assistant turns "
                    "(text, tool_use, thinking, redacted_thinking)",
                    f"{bwhere}.type",
                )
        if not texts and not calls:
            return []  # only thinking: nothing a chat model can read
        message: dict[str, Any] = {"role": "assistant"}
        if len(texts) == 1:
            message["content"] = texts[0]
        elif texts:
            message["content"] = [{"type": "text", "text": t} for t in texts]
        else:
            message["content"] = None
        if calls:
            message["tool_calls"] = calls
        return [message]

    def messages(self, messages: Any) -> list[dict[str, Any]]:
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages must be a non-empty array", "messages")
        out: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            message = _object(message, where)
            _only(message, frozenset({"role", "content"}), where)
            role = message.get("role")
            content = message.get("content")
            if not isinstance(content, str | list):
                raise _invalid(
                    f"{where}.content must be a string or an array of content blocks",
                    f"{where}.content",
                )
            if role == "user":
                out.extend(self.user(content, where))
            elif role == "assistant":
                out.extend(self.assistant(content, where))
            else:
                raise _invalid(f'{where}.role must be "user" or "assistant"', f"{where}.role")
        if not out:
            raise _invalid("messages have no content a model can read", "messages")
        return out

    def system(self, system: Any) -> dict[str, Any] | None:
        if system is None:
            return None
        if isinstance(system, str):
            return {"role": "system", "content": system} if system else None
        if not isinstance(system, list):
            raise _invalid("system must be a string or an array of text blocks", "system")
        texts: list[str] = []
        for j, block in enumerate(system):
            where = f"system[{j}]"
            block = _object(block, where)
            if block.get("type") != "text":
                raise _invalid(f'{where}.type must be "text"', f"{where}.type")
            text = self.text(block, where)
            if text:
                texts.append(text)
        if not texts:
            return None
        if len(texts) == 1:
            return {"role": "system", "content": texts[0]}
        return {"role": "system", "content": [{"type": "text", "text": t} for t in texts]}

    # ------------------------------------------------------------------ tools

    def tools(self, tools: Any) -> list[dict[str, Any]]:
        if not isinstance(tools, list):
            raise _invalid("tools must be an array", "tools")
        out: list[dict[str, Any]] = []
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            tool = _object(tool, where)
            kind = tool.get("type")
            if kind is not None and kind != "custom":
                raise _invalid(
                    f"{where}: Anthropic's server and built-in tools (type {kind!r}: web "
                    f"search and fetch, code execution, computer use, text editor, bash, "
                    f"memory, tool search) are not supported: each {_PRICED_APART}",
                    f"{where}.type",
                )
            _only(
                tool,
                # eager_input_streaming: how finely the input streams, not what it is.
                frozenset({"type", "name", "description", "input_schema", "cache_control"})
                | {"strict", "eager_input_streaming"},
                where,
            )
            name = _string(tool, "name", where)
            description = _string(tool, "description", where, required=False)
            schema = _object(tool.get("input_schema"), f"{where}.input_schema")
            if schema.get("type") != "object":
                raise _invalid(
                    f'{where}.input_schema.type must be "object"', f"{where}.input_schema.type"
                )
            self.cache_control(tool.get("cache_control"), where)
            function: dict[str, Any] = {"name": name, "parameters": schema}
            if description is not None:
                function["description"] = description
            strict = tool.get("strict")
            if strict is not None:
                if not isinstance(strict, bool):
                    raise _invalid(f"{where}.strict must be a boolean", f"{where}.strict")
                function["strict"] = strict
            out.append({"type": "function", "function": function})
        return out


def _tool_choice(choice: Any, has_tools: bool, chat: dict[str, Any]) -> None:
    choice = _object(choice, "tool_choice")
    kind = choice.get("type")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid(
            "tool_choice.disable_parallel_tool_use must be a boolean",
            "tool_choice.disable_parallel_tool_use",
        )
    if kind in ("auto", "any"):
        _only(choice, frozenset({"type", "disable_parallel_tool_use"}), "tool_choice")
        value: Any = "auto" if kind == "auto" else "required"
    elif kind == "tool":
        _only(choice, frozenset({"type", "name", "disable_parallel_tool_use"}), "tool_choice")
        name = _string(choice, "name", "tool_choice")
        value = {"type": "function", "function": {"name": name}}
    elif kind == "none":
        _only(choice, frozenset({"type"}), "tool_choice")
        value = "none"
    else:
        raise _invalid(
            'tool_choice.type must be "auto", "any", "tool" or "none"', "tool_choice.type"
        )
    if not has_tools:
        # Chat APIs refuse tool_choice without tools; "auto" and "none" mean nothing then.
        if kind in ("any", "tool"):
            raise _invalid(f"tool_choice {kind!r} needs tools", "tool_choice")
        return
    chat["tool_choice"] = value
    if parallel and kind != "none":
        chat["parallel_tool_calls"] = False


def _stop_sequences(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _invalid("stop_sequences must be an array of strings", "stop_sequences")
    if len(value) > _MAX_STOP:
        raise _invalid(
            f"at most {_MAX_STOP} stop_sequences are supported (the chat API's limit)",
            "stop_sequences",
        )
    for i, sequence in enumerate(value):
        if not sequence.strip():
            raise _invalid(
                "each stop sequence must contain non-whitespace characters",
                f"stop_sequences[{i}]",
            )
    return list(value)


def _sampling(body: Mapping[str, Any], chat: dict[str, Any], t: _Translation) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value):
            raise _invalid(f"{name} must be a number", name)
        if not 0 <= value <= 1:
            raise _invalid(f"{name} must be between 0 and 1", name)
        chat[name] = value  # the same value means the same on both APIs' 0..1
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or top_k < 0:
            raise _invalid("top_k must be a non-negative integer", "top_k")
        t.native_only["top_k"] = "has no equivalent on this model's chat-completions route"


def _effort(budget: int) -> str:
    for bound, effort in EFFORT_BY_BUDGET:
        if budget < bound:
            return effort
    return "high"


def _thinking(value: Any, max_tokens: int | None, chat: dict[str, Any]) -> None:
    thinking = _object(value, "thinking")
    kind = thinking.get("type")
    if kind == "enabled":
        _only(thinking, frozenset({"type", "budget_tokens", "display"}), "thinking")
        budget = thinking.get("budget_tokens")
        if not _is_int(budget) or budget < 1024:
            raise _invalid(
                "thinking.budget_tokens must be an integer of at least 1024",
                "thinking.budget_tokens",
            )
        if max_tokens is not None and budget >= max_tokens:
            raise _invalid(
                "thinking.budget_tokens must be less than max_tokens", "thinking.budget_tokens"
            )
        chat["reasoning_effort"] = _effort(budget)
    elif kind in ("disabled", "adaptive"):
        # adaptive: the model decides how much to think, as chat reasoning models do
        # without a reasoning_effort.
        allowed = {"type", "display"} if kind == "adaptive" else {"type"}
        _only(thinking, frozenset(allowed), "thinking")
    else:
        raise _invalid('thinking.type must be "enabled", "disabled" or "adaptive"', "thinking.type")


def _output_config(value: Any, chat: dict[str, Any], t: _Translation) -> None:
    config = _object(value, "output_config")
    _only(config, frozenset({"effort", "format"}), "output_config")
    effort = config.get("effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise _invalid("output_config.effort must be a string", "output_config.effort")
        if effort in _CHAT_EFFORTS:
            chat["reasoning_effort"] = effort
        elif effort in _NATIVE_EFFORTS:
            t.native_only["output_config.effort"] = (
                f"{effort!r} has no chat reasoning_effort equivalent (low, medium, high)"
            )
        else:
            raise _invalid(
                "output_config.effort must be low, medium, high, xhigh or max",
                "output_config.effort",
            )
    fmt = config.get("format")
    if fmt is not None:
        fmt = _object(fmt, "output_config.format")
        _only(fmt, frozenset({"type", "schema"}), "output_config.format")
        if fmt.get("type") != "json_schema":
            raise _invalid(
                'output_config.format.type must be "json_schema"', "output_config.format.type"
            )
        schema = _object(fmt.get("schema"), "output_config.format.schema")
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }


def _metadata(value: Any, chat: dict[str, Any]) -> None:
    metadata = _object(value, "metadata")
    _only(metadata, frozenset({"user_id"}), "metadata")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise _invalid("metadata.user_id must be a string", "metadata.user_id")
    if user:
        chat["user"] = user


def _headers(headers: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """The anthropic-version value and the anthropic-beta flags (every such header,
    split on commas), looked up case-insensitively."""
    version: str | None = None
    betas: list[str] = []
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "anthropic-version":
            version = value.strip() or None
        elif lowered == "anthropic-beta":
            betas.extend(flag.strip() for flag in value.split(",") if flag.strip())
    return version, tuple(dict.fromkeys(betas))


def _refuse_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name, what in _PRICED_APART_FIELDS.items():
        if body.get(name) is not None:
            raise _invalid(f"{what} {_PRICED_APART}", name)
    unknown = _unknown(body, allowed)
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise _invalid(
            f"unknown parameter {listed}: {unknown[0]!r} is not a Messages parameter "
            "this gateway supports",
            unknown[0],
        )


def _translate(body: Any, headers: Mapping[str, str], *, counting: bool) -> MessagesRequest:
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object", None)
    _refuse_fields(body, COUNT_FIELDS if counting else CREATE_FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model is required (a non-empty string)", "model")
    max_tokens = body.get("max_tokens")
    if not counting and (not _is_int(max_tokens) or max_tokens < 1):
        what = "is required" if max_tokens is None else "must be a positive integer"
        raise _invalid(f"max_tokens {what}", "max_tokens")
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream must be a boolean", "stream")

    t = _Translation()
    system = t.system(body.get("system"))
    messages = t.messages(body.get("messages"))
    chat: dict[str, Any] = {"model": model, "messages": [system, *messages] if system else messages}
    if not counting:
        chat["max_completion_tokens"] = max_tokens
    if stream:
        chat["stream"] = True
    t.cache_control(body.get("cache_control"), "")
    if body.get("stop_sequences") is not None:
        stops = _stop_sequences(body["stop_sequences"])
        if stops:
            chat["stop"] = stops
    _sampling(body, chat, t)
    tools = t.tools(body["tools"]) if body.get("tools") is not None else []
    if tools:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], bool(tools), chat)
    if body.get("thinking") is not None:
        _thinking(body["thinking"], None if counting else max_tokens, chat)
    if body.get("output_config") is not None:
        _output_config(body["output_config"], chat, t)
    if body.get("metadata") is not None:
        _metadata(body["metadata"], chat)
    tier = body.get("service_tier")
    if tier is not None:
        if not isinstance(tier, str) or tier not in _SERVICE_TIERS:
            raise _invalid('service_tier must be "auto" or "standard_only"', "service_tier")
        chat["service_tier"] = _SERVICE_TIERS[tier]
    version, betas = _headers(headers)
    return MessagesRequest(
        chat_body=chat,
        body=body,
        model=model,
        max_tokens=None if counting else max_tokens,
        stream=stream,
        anthropic_version=version,
        anthropic_beta=betas,
        native_only=t.native_only,
        dropped=tuple(t.dropped),
        dropped_input_bytes=t.dropped_bytes,
    )


def parse_request(body: Any, headers: Mapping[str, str]) -> MessagesRequest:
    """Validate a Messages create body (``POST /v1/messages``) and translate it into a
    chat-completions body; ValidationFailed (422) names the first offending field."""
    return _translate(body, headers, counting=False)


def parse_count_tokens(body: Any, headers: Mapping[str, str]) -> MessagesRequest:
    """The same for ``POST /v1/messages/count_tokens``: the prompt side only (no
    ``max_tokens``, ``stream`` or sampling parameters)."""
    return _translate(body, headers, counting=True)


def count_tokens_estimate(
    request: MessagesRequest,
    *,
    image_bound: int = DEFAULT_IMAGE_BOUND,
    context_tokens: int | None = None,
) -> dict[str, int]:
    """``{"input_tokens": n}``: an UPPER BOUND of the prompt's tokens, not a count (the
    gateway's reservation bound of the chat body: UTF-8 bytes plus per-message
    allowances, ``image_bound`` per image, plus the bytes of the thinking blocks the chat
    body dropped). A file part needs ``context_tokens``, else ValidationFailed names it."""
    try:
        bound = input_token_bound(request.chat_body, image_bound, context_tokens)
    except UnboundedInput as exc:
        raise _invalid(
            "a document's tokens cannot be bounded without the model's context window",
            exc.param,
        ) from None
    bound += request.dropped_input_bytes
    if context_tokens is not None:
        bound = min(bound, context_tokens)
    return {"input_tokens": bound}
