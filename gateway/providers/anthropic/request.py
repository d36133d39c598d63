"""The Anthropic Messages request, pure: the gateway's OpenAI chat body as a Messages
body (:func:`translate_request`: system prompt, alternating turns of content blocks,
tool_use / tool_result, tools and tool_choice, stop sequences, the required
``max_tokens``, and ``response_format`` JSON modes as one forced tool, whose input is
the answer), and the call's headers (the provider key as ``x-api-key``, never
``Authorization``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.config import ProviderConfig
from gateway.errors import ValidationFailed
from gateway.params import forwarded_extras
from gateway.providers.base import UpstreamRequest

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # only if the gateway set none (it always clamps one in)
# Headers the adapter owns: an operator's or caller's value never replaces them.
_OWNED_HEADERS = frozenset({"authorization", "x-api-key", "content-type", "accept"})


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


def payload(request: UpstreamRequest, config: ProviderConfig, stream: bool) -> dict[str, Any]:
    """The Messages body of one call: the translation, the operator's allowed extras
    (top_k, thinking, ...: none can name a field the translation writes, see config
    validation and gateway.params), and ``stream`` exactly when streaming."""
    out = translate_request(request.body)
    out.update(forwarded_extras(request.body, config.extra_params))
    if stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
    return out


def headers(config: ProviderConfig, request: UpstreamRequest, stream: bool) -> dict[str, str]:
    out = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "anthropic-version": ANTHROPIC_VERSION,
        "x-request-id": request.request_id,
    }
    # Operator headers (e.g. anthropic-beta, a newer anthropic-version), then the
    # call's; neither may carry a credential or replace the framing headers.
    for extra in (config.headers, request.extra_headers):
        for name, value in extra.items():
            if name.lower() not in _OWNED_HEADERS:
                out[name.lower()] = value
    if request.api_key:
        out["x-api-key"] = request.api_key
    return out
