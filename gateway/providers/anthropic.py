"""Anthropic Messages API upstreams (``POST {base_url}/messages``).

Pure translation first, unit-tested on dicts and bytes:

* :func:`translate_request`: the gateway's OpenAI chat body -> a Messages body
  (system prompt, alternating turns of content blocks, tool_use / tool_result,
  tools and tool_choice, stop sequences, the required ``max_tokens``, and
  ``response_format`` JSON modes as one forced tool, whose input is the answer).
* :func:`translate_response`: a Messages answer -> an OpenAI ``chat.completion``.
* :class:`StreamTranslator`: Messages SSE bytes -> OpenAI ``chat.completion.chunk``
  dicts, ending with a ``choices: []`` usage chunk.

Usage is reported in OpenAI's shape, which :func:`gateway.usage.from_openai` reads:
``prompt_tokens`` counts every input token (uncached + cache writes + cache reads),
``prompt_tokens_details.cached_tokens`` the cache reads and
``prompt_tokens_details.cache_creation_tokens`` the cache writes, so each is priced
with its own price. In streams ``message_start`` carries the input side and
``message_delta`` the *cumulative* output count: the last value wins, nothing is summed.

Then the adapter: same structure, timeouts and error mapping as the OpenAI one,
with the provider key sent as ``x-api-key`` (never ``Authorization``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.config import ProviderConfig
from gateway.errors import GatewayError, UpstreamFailed, ValidationFailed
from gateway.params import forwarded_extras
from gateway.providers.base import ChunkStream, UpstreamRequest, UpstreamStreamError
from gateway.providers.errortext import provider_code, with_code
from gateway.providers.http import HttpChunkStream, HttpProvider
from gateway.providers.openai import error_for_status
from gateway.sse import EventTooLarge, SSEEvent, SSEParser
from gateway.validation import asks_for_json

__all__ = [
    "ANTHROPIC_VERSION",
    "JSON_TOOL",
    "AnthropicProvider",
    "AnthropicStream",
    "StreamTranslator",
    "anthropic_error_for_status",
    "finish_reason",
    "openai_usage",
    "translate_request",
    "translate_response",
]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # only if the gateway set none (it always clamps one in)
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Headers the adapter owns: an operator's or caller's value never replaces them.
_OWNED_HEADERS = frozenset({"authorization", "x-api-key", "content-type", "accept"})


# --------------------------------------------------------------------------- request


def _invalid(message: str, param: str) -> ValidationFailed:
    return ValidationFailed(f"provider anthropic: {message}", param)


def _cache_control(value: Any) -> dict[str, Any] | None:
    """Prompt-caching marks on parts and tools, passed through as 5-minute breakpoints.

    A ``ttl`` ("1h") is dropped: one-hour cache writes cost more than the single
    ``cache_write`` price the gateway bills them at, and billing must never be low.
    """
    if isinstance(value, dict) and value.get("type") == "ephemeral":
        return {"type": "ephemeral"}
    return None


def _base64_source(url: str, param: str) -> dict[str, Any]:
    """``data:<media type>;base64,<data>`` as an Anthropic base64 source."""
    header, sep, data = url.removeprefix("data:").partition(",")
    media_type, *params = header.split(";")
    if not url.startswith("data:") or not sep or "base64" not in params or not media_type:
        raise _invalid("data URLs must be base64 encoded (data:<type>;base64,...)", param)
    return {"type": "base64", "media_type": media_type, "data": data}


def _image_block(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        return {"type": "image", "source": _base64_source(url, f"{where}.image_url.url")}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid("image URLs must be data: or http(s) URLs", f"{where}.image_url.url")


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str):
        raise _invalid("file parts need file_data (a base64 data URL)", f"{where}.file")
    return {"type": "document", "source": _base64_source(data_url, f"{where}.file.file_data")}


def _system_blocks(content: Any) -> list[dict[str, Any]]:
    """A system/developer message (a string or text parts) as text blocks, each part
    keeping its cache_control mark; empty text dropped."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str) or not text:
            continue
        block: dict[str, Any] = {"type": "text", "text": text}
        cache_control = _cache_control(part.get("cache_control"))
        if cache_control is not None:
            block["cache_control"] = cache_control
        blocks.append(block)
    return blocks


def _system(messages: list[list[dict[str, Any]]]) -> str | list[dict[str, Any]]:
    """The system prompt: one string (parts joined by a newline, messages by a blank
    line), or, when a part carries a cache_control mark, the text blocks themselves
    (Anthropic takes system as an array of text blocks; a string cannot carry marks)."""
    blocks = [block for message in messages for block in message]
    if any("cache_control" in block for block in blocks):
        return blocks
    return "\n\n".join("\n".join(block["text"] for block in message) for message in messages)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content (a string or content parts) as Anthropic content blocks; empty text dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        pwhere = f"{where}.content[{j}]"
        kind = part.get("type")
        block: dict[str, Any]
        if kind in ("text", "refusal"):
            text = part.get("text") if kind == "text" else part.get("refusal")
            if not isinstance(text, str) or not text:
                continue
            block = {"type": "text", "text": text}
        elif kind == "image_url":
            block = _image_block(part["image_url"]["url"], pwhere)
        elif kind == "file":
            block = _file_block(part, pwhere)
        else:
            raise _invalid(f"content parts of type {kind!r} are not supported", f"{pwhere}.type")
        cache_control = _cache_control(part.get("cache_control"))
        if cache_control is not None:
            block["cache_control"] = cache_control
        blocks.append(block)
    return blocks


def _tool_use_blocks(calls: list[Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, call in enumerate(calls):
        cwhere = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid("tool calls need function.name", cwhere)
        if not isinstance(call.get("id"), str):
            raise _invalid("tool calls need an id", f"{cwhere}.id")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise _invalid(
                "tool call arguments must be a JSON object", f"{cwhere}.function.arguments"
            )
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}
        )
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif isinstance(content, list):
        block["content"] = _blocks(content, where)
    return block


def _messages(
    messages: list[dict[str, Any]],
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The system prompt, and the turns, strictly alternating user/assistant."""
    system: list[list[dict[str, Any]]] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            blocks = _system_blocks(content)
            if blocks:
                system.append(blocks)
            continue
        if role == "user":
            turns.append(("user", _blocks(content, where)))
        elif role == "assistant":
            if message.get("function_call") is not None:
                # No call id to pair a result with; dropped, the turns around it would merge.
                raise _invalid(
                    "legacy function_call in assistant messages is not supported; use tool_calls",
                    f"{where}.function_call",
                )
            blocks = _blocks(content, where)
            blocks += _tool_use_blocks(message.get("tool_calls") or [], where)
            turns.append(("assistant", blocks))
        elif role == "tool":
            turns.append(("user", [_tool_result_block(message, where)]))
        else:  # "function": legacy function calling has no call ids to pair results with
            raise _invalid("legacy function messages are not supported; use tools", where)
    merged: list[dict[str, Any]] = []
    for role, blocks in turns:
        if not blocks:
            continue  # Anthropic rejects empty turns
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"].extend(blocks)
        else:
            merged.append({"role": role, "content": list(blocks)})
    for turn in merged:
        if turn["role"] == "user":
            # tool_result blocks must open the user turn that answers the tool calls.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if not merged:
        raise _invalid("at least one user or assistant message with content is needed", "messages")
    return _system(system), merged


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise _invalid("only function tools are supported", f"tools[{i}]")
        name = function.get("name")
        if not isinstance(name, str):
            raise _invalid("tools need function.name", f"tools[{i}].function.name")
        schema = function.get("parameters")
        spec: dict[str, Any] = {
            "name": name,
            "input_schema": schema
            if isinstance(schema, dict)
            else {"type": "object", "properties": {}},
        }
        if isinstance(function.get("description"), str):
            spec["description"] = function["description"]
        cache_control = _cache_control(tool.get("cache_control"))
        if cache_control is not None:
            spec["cache_control"] = cache_control
        out.append(spec)
    return out


# response_format's JSON modes: Messages has no such parameter, so the answer is asked
# for as the input of one tool the model must call, and that input becomes the content.
JSON_TOOL = "json_answer"


def _json_tool(response_format: Any, has_tools: bool) -> dict[str, Any] | None:
    """The forced tool that carries a JSON answer; None for plain text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise _invalid(
            'response_format.type must be "text", "json_object" or "json_schema"',
            "response_format",
        )
    if has_tools:
        raise _invalid(
            "response_format with tools is not supported by Anthropic routes",
            "response_format",
        )
    tool: dict[str, Any] = {
        "name": JSON_TOOL,
        "description": "Give the answer as this tool's input.",
        "input_schema": {"type": "object"},
    }
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("schema"), dict)
            or spec["schema"].get("type") != "object"
        ):
            raise _invalid(
                "json_schema.schema must be an object schema on Anthropic routes",
                "response_format",
            )
        tool["input_schema"] = spec["schema"]
        if isinstance(spec.get("description"), str):
            tool["description"] = spec["description"]
    return tool


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _invalid(
            'tool_choice must be "auto", "none", "required" or a function', "tool_choice"
        )
    if parallel is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def _refuse_what_cannot_be_honoured(body: Mapping[str, Any]) -> None:
    """Parameters that change the answer and have no Messages equivalent: dropping them
    would answer differently without saying so. Their empty / null values pass."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise _invalid("n > 1 is not supported", "n")
    if body.get("logit_bias"):
        raise _invalid("logit_bias is not supported", "logit_bias")
    if body.get("functions"):
        raise _invalid("legacy functions are not supported; use tools", "functions")
    if body.get("function_call") is not None:
        raise _invalid(
            "legacy function_call is not supported; use tools and tool_choice", "function_call"
        )
    if body.get("audio") is not None:
        raise _invalid("audio output is not supported", "audio")
    modalities = body.get("modalities")
    if modalities is not None and (
        not isinstance(modalities, list) or any(kind != "text" for kind in modalities)
    ):
        raise _invalid('modalities other than "text" are not supported', "modalities")


def _stop_sequences(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, list) else []
    if any(not isinstance(sequence, str) or not sequence.strip() for sequence in stops):
        # Anthropic answers 400 to them: refused here, without the round trip.
        raise _invalid("each stop sequence must contain non-whitespace characters", "stop")
    return stops


def translate_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The gateway's (validated, route-rewritten) OpenAI chat body as a Messages body.

    ``response_format`` JSON modes become one forced tool (see :data:`JSON_TOOL`).
    Parameters Anthropic has no equivalent for (seed, penalties, logprobs,
    reasoning_effort, ...: the README lists them) are dropped; ones it cannot honour,
    whose loss would change the answer unannounced, raise ValidationFailed (422)
    naming the field.
    """
    _refuse_what_cannot_be_honoured(body)
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    if system:
        out["system"] = system
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS
    stop_sequences = _stop_sequences(body.get("stop"))
    if stop_sequences:
        out["stop_sequences"] = stop_sequences
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        # OpenAI 0..2, Anthropic 0..1: clamped, not rescaled (README, Anthropic routes).
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    if body.get("top_p") is not None and "temperature" not in out:
        # Recent models (Sonnet/Haiku 4.5, Opus 4.1 and later) answer 400 to both:
        # temperature wins, as Anthropic advises altering one or the other.
        out["top_p"] = body["top_p"]
    tools = body.get("tools")
    json_tool = _json_tool(body.get("response_format"), bool(tools))
    if json_tool is not None:
        out["tools"] = [json_tool]
        out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    elif tools:
        out["tools"] = _tools(tools)
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if body.get("stream") is True:
        out["stream"] = True
    return out


# --------------------------------------------------------------------------- answers


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage in OpenAI's shape (plus the gateway's cache_creation_tokens)."""
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    cache_read = _count(usage.get("cache_read_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + cache_write + cache_read
    completion = _count(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": cache_read,
            "cache_creation_tokens": cache_write,
        },
    }


def finish_reason(stop_reason: Any) -> str:
    return _STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _finish(stop_reason: Any, json_answer: bool) -> str:
    if json_answer and stop_reason == "tool_use":
        return "stop"  # it called the answer tool, as it was told to
    return finish_reason(stop_reason)


def _arguments(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def translate_response(
    message: Any, created: int | None = None, *, json_answer: bool = False
) -> dict[str, Any]:
    """A Messages answer as an OpenAI ``chat.completion``; ValueError if it is not one.

    ``json_answer``: the request asked for JSON, so the forced tool's input is the
    answer's content (and the model stopping to call it is a normal stop).
    """
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise ValueError("not an Anthropic message")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            if not json_answer:  # any words around the JSON are not part of it
                texts.append(block["text"])
        elif json_answer and block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
            texts.append(_arguments(block.get("input")))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": _arguments(block.get("input")),
                    },
                }
            )
        # thinking / redacted_thinking / server tool blocks: not part of the OpenAI shape
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        reply["tool_calls"] = calls
    completion: dict[str, Any] = {
        "id": message.get("id") or "",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model") or "",
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": _finish(message.get("stop_reason"), json_answer),
            }
        ],
    }
    usage = message.get("usage")
    if isinstance(usage, dict):
        completion["usage"] = openai_usage(usage)
    return completion


def _member(data: dict[str, Any], name: str) -> dict[str, Any]:
    """An event's object member (empty when absent); any other type fails the stream."""
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UpstreamStreamError("upstream_error", f"the provider sent an invalid {name}")
    return value


def _index(data: dict[str, Any]) -> int | None:
    """A content block's index: an integer (None when absent); else the stream fails."""
    index = data.get("index")
    if index is None or type(index) is int:
        return index
    raise UpstreamStreamError("upstream_error", "the provider sent an invalid block index")


class StreamTranslator:
    """Messages SSE bytes in, OpenAI chunk dicts out (pure, incremental).

    ``feed`` bytes as they arrive, ``close`` at end of input. The assistant role rides
    on the first chunk that carries something (text, a tool call or the finish), not
    on ``message_start``: an error frame right after ``message_start`` (Anthropic's
    usual "overloaded") then fails the stream before its first chunk, while the
    gateway can still retry or fall back. The usage chunk is emitted at
    ``message_stop``, or at ``close`` when the stream ended without one (some
    recordings lack the final blank line). A stream that ends before its
    ``message_delta`` was cut. Failures never cost the chunks that preceded them:
    ``feed`` and ``close`` return those, keep the failure in ``error`` and ``check()``
    raises it (as do later ``feed`` / ``close`` calls): UpstreamStreamError, with
    ``declared=True`` for the provider's own ``error`` frame.
    """

    def __init__(
        self, created: int | None = None, secret: str = "", *, json_answer: bool = False
    ) -> None:
        self.parser = SSEParser()
        # The request asked for JSON: the forced tool's input streams as content.
        self.json_answer = json_answer
        self._json_block: int | None = None  # the Anthropic block index of that tool call
        self.secret = secret  # the provider key: no error code relayed may resemble it
        self.created = int(time.time()) if created is None else created
        self.id = ""
        self.model = ""
        self.usage: dict[str, Any] = {}
        self.sent_role = False
        self.saw_delta = False
        self.done = False  # the usage chunk was emitted: nothing follows
        self.error: UpstreamStreamError | None = None
        self._tools: dict[int | None, int] = {}  # Anthropic block index -> OpenAI tool index

    def check(self) -> None:
        """Raise the failure the input carried, if any."""
        if self.error is not None:
            raise self.error

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.check()
        if self.done:
            return []
        try:
            events = self.parser.feed(data)
        except EventTooLarge as exc:  # the events before it still count
            out = self._events(exc.events)
            if self.error is None:
                self.error = UpstreamStreamError("upstream_error", f"the provider sent {exc}")
            return out
        return self._events(events)

    def close(self) -> list[dict[str, Any]]:
        self.check()
        if self.done:
            return []
        out = self._events(self.parser.close())
        if self.error is None and not self.done:
            if self.saw_delta:
                out.append(self._usage_chunk())
            else:
                self.error = UpstreamStreamError(
                    "upstream_error", "the provider stream ended early"
                )
        return out

    def _events(self, events: list[SSEEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            if self.done:
                break
            try:
                self._event(event, out)
            except UpstreamStreamError as exc:
                self.error = exc
                break
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self.sent_role:
            self.sent_role = True
            delta = {"role": "assistant", **delta}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _usage_chunk(self) -> dict[str, Any]:
        self.done = True
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": openai_usage(self.usage),
        }

    def _event(self, event: SSEEvent, out: list[dict[str, Any]]) -> None:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamStreamError("upstream_error", "the provider sent invalid JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamStreamError("upstream_error", "the provider sent an invalid event")
        kind = data.get("type") or event.event
        if kind == "error" or event.event == "error":
            code = provider_code(data.get("error"), self.secret)
            raise UpstreamStreamError(
                "upstream_error", with_code("the provider reported an error", code), declared=True
            )
        if kind == "message_start":
            message = _member(data, "message")
            self.id = str(message.get("id") or "")
            self.model = str(message.get("model") or "")
            if isinstance(message.get("usage"), dict):
                self.usage.update(message["usage"])
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "content_block_delta":
            self._block_delta(data, out)
        elif kind == "message_delta":
            self.saw_delta = True
            usage = data.get("usage")
            if isinstance(usage, dict):
                # Cumulative counts, never summed: message_start's output_tokens (1) is
                # part of the final count. They only grow; should a later value be lower,
                # the higher one is kept (never under-bill).
                for key, value in usage.items():
                    if isinstance(value, int) and value > _count(self.usage.get(key)):
                        self.usage[key] = value
            delta = _member(data, "delta")
            if delta.get("stop_reason"):
                out.append(self._chunk({}, _finish(delta["stop_reason"], self.json_answer)))
        elif kind == "message_stop":
            if not self.saw_delta:
                raise UpstreamStreamError("upstream_error", "the provider stream ended early")
            out.append(self._usage_chunk())
        # ping, content_block_stop and unknown events carry nothing to relay

    def _block_start(self, data: dict[str, Any], out: list[dict[str, Any]]) -> None:
        block = _member(data, "content_block")
        if self.json_answer:
            if block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
                self._json_block = _index(data)
                if block.get("input"):  # complete up front (not streamed in pieces)
                    out.append(self._chunk({"content": _arguments(block["input"])}))
            return  # text around the JSON is not part of it
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            out.append(self._chunk({"content": block["text"]}))
        elif block.get("type") == "tool_use":
            index = self._tools[_index(data)] = len(self._tools)
            initial = block.get("input")
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": _arguments(initial) if initial else "",
                },
            }
            out.append(self._chunk({"tool_calls": [call]}))

    def _block_delta(self, data: dict[str, Any], out: list[dict[str, Any]]) -> None:
        delta = _member(data, "delta")
        kind = delta.get("type")
        fragment = delta.get("partial_json")
        if not isinstance(fragment, str):
            fragment = ""
        if self.json_answer:
            if kind == "input_json_delta" and _index(data) == self._json_block and fragment:
                out.append(self._chunk({"content": fragment}))
            return
        if kind == "text_delta":
            if isinstance(delta.get("text"), str) and delta["text"]:
                out.append(self._chunk({"content": delta["text"]}))
        elif kind == "input_json_delta":
            index = self._tools.get(_index(data))
            if index is not None and fragment:
                call = {"index": index, "function": {"arguments": fragment}}
                out.append(self._chunk({"tool_calls": [call]}))
        # thinking_delta, signature_delta, citations_delta: not part of the OpenAI shape


# --------------------------------------------------------------------------- the adapter


def anthropic_error_for_status(
    provider: str, status: int, body: bytes, headers: Any, secret: str = ""
) -> GatewayError:
    """Like the OpenAI mapping (the error body has the same ``error.message``), plus
    Anthropic's 413 (request too large) and 529 (overloaded)."""
    if status == 413:
        return ValidationFailed(f"provider {provider}: the request is too large", None)
    if status == 529:
        return UpstreamFailed.detail(f"provider {provider} is overloaded (HTTP 529)")
    return error_for_status(provider, status, body, headers, secret)


class AnthropicStream(HttpChunkStream):
    def __init__(
        self,
        provider: str,
        response: aiohttp.ClientResponse,
        secret: str = "",
        *,
        json_answer: bool = False,
        idle: float | None = None,
        first_byte_deadline: float | None = None,
    ) -> None:
        super().__init__(provider, response, idle=idle, first_byte_deadline=first_byte_deadline)
        self.translator = StreamTranslator(secret=secret, json_answer=json_answer)

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        translator = self.translator
        async for piece in self.reads():
            batch = translator.feed(piece) if piece is not None else translator.close()
            if batch:
                yield batch
            translator.check()
            if translator.done:
                self.finished = True
                return
        self.finished = True


class AnthropicProvider(HttpProvider):
    def __init__(self, name: str, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(name, config, session)
        self.url = config.base_url.rstrip("/") + "/messages"

    def _headers(self, request: UpstreamRequest, stream: bool) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            "x-request-id": request.request_id,
        }
        # Operator headers (e.g. anthropic-beta, a newer anthropic-version), then the
        # call's; neither may carry a credential or replace the framing headers.
        for extra in (self.config.headers, request.extra_headers):
            for name, value in extra.items():
                if name.lower() not in _OWNED_HEADERS:
                    headers[name.lower()] = value
        if request.api_key:
            headers["x-api-key"] = request.api_key
        return headers

    async def _send(
        self, request: UpstreamRequest, stream: bool, deadline: float | None
    ) -> aiohttp.ClientResponse:
        payload = translate_request(request.body)
        # The operator's allowed extras (top_k, thinking, ...) go as sent: none can name a
        # field the translation writes (config validation, gateway.params).
        payload.update(forwarded_extras(request.body, self.config.extra_params))
        if stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        return await self.post(
            self.url,
            orjson.dumps(payload),
            self._headers(request, stream),
            deadline=deadline,
            api_key=request.api_key,
            error_for_status=anthropic_error_for_status,
        )

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        response = await self._send(request, False, None)
        json_answer = asks_for_json(request.body)
        return await self.read_completion(
            response,
            request.api_key,
            anthropic_error_for_status,
            lambda message: translate_response(message, json_answer=json_answer),
        )

    async def open_stream(self, request: UpstreamRequest) -> ChunkStream:
        deadline = self.stream_deadline()
        response = await self._send(request, True, deadline)
        return AnthropicStream(
            self.name,
            response,
            request.api_key,
            json_answer=asks_for_json(request.body),
            idle=self.config.timeouts.idle,
            first_byte_deadline=deadline,
        )
