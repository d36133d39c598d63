"""OpenAI Responses create body -> chat-completions body, pure.

The chat body holds only fields of gateway.params.UNDERSTOOD, so what goes upstream is
what the pipeline validates and reserves for. Every refusal raises ValidationFailed
naming the Responses field (``tools[0].type``, ``input[2].content[1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ValidationFailed
from gateway.validation import validate_chat_request

# Top-level fields translated, kept (store, metadata, previous_response_id) or ignored
# because they cannot change what is generated or billed (include's harmless values,
# stream_options.include_obfuscation, truncation, background: false).
ACCEPTED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "reasoning",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "stream",
        "stream_options",
        "previous_response_id",
        "truncation",
        "include",
        "service_tier",
        "prompt_cache_key",
        "background",
    }
)

# Responses fields this surface knows and refuses, with the reason given.
REFUSED = {
    "prompt": "stored prompt templates live at the provider; send instructions and input",
    "conversation": "conversations live at the provider; chain turns with previous_response_id",
    "context_management": "server-side context compaction is not supported",
    "max_tool_calls": "it limits hosted tool calls, which this gateway does not run",
    "top_logprobs": "log probabilities are not translated to the Responses API",
    "prompt_cache_options": "provider cache options are not supported",
    "prompt_cache_retention": "provider cache retention is not supported",
    "moderation": "provider moderation is not supported",
    "image": "image options are not supported",
    "access_programs": "access programs are not supported",
    "background_options": "background responses are not supported",
}

# Tools the provider runs and bills per call, per session or per container, apart from
# tokens: the gateway's caps count tokens only, so a budget could not hold.
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_2025_08_26",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "computer",
        "computer_use_preview",
        "image_generation",
        "mcp",
        "local_shell",
        "shell",
        "tool_search",
    }
)
PRICED_APART = "refused: priced by the provider apart from tokens"

# ``include`` values that only ask for outputs of tools this surface refuses, or for
# encrypted reasoning it never has: asking for them changes nothing.
HARMLESS_INCLUDES = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
    }
)

_NO_AUDIO = (
    "audio input is not supported: audio tokens are priced apart from text, "
    "and this gateway bills text prices"
)
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_IMAGE_DETAILS = frozenset({"auto", "low", "high"})


@dataclass(slots=True)
class ResponsesRequest:
    """A validated Responses create request and its chat-completions translation."""

    chat: dict[str, Any]  # the chat-completions body: instructions, then the input
    messages: list[dict[str, Any]]  # the input as chat messages (no instructions)
    instructions: str | None
    model: str | None
    stream: bool
    store: bool
    previous_response_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    # The request fields a response object repeats (instructions, tools, text, ...).
    echo: dict[str, Any] = field(default_factory=dict)


def _fail(message: str, param: str) -> ValidationFailed:
    return ValidationFailed(message, param)


def _string(value: Any, where: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        what = "a string" if empty else "a non-empty string"
        raise _fail(f"{where} must be {what}", where)
    return value


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return None if value is None else _string(value, name)


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{name} must be a number", name)
    if not lo <= value <= hi:
        raise _fail(f"{name} must be between {lo:g} and {hi:g}", name)
    return value


def _boolean(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _fail(f"{name} must be a boolean", name)
    return value


def _refuse_fields(body: dict[str, Any]) -> None:
    for name in sorted(body.keys() & REFUSED.keys()):
        if body[name] is not None:
            raise _fail(f"{name!r} is not supported: {REFUSED[name]}", name)
    unknown = sorted(body.keys() - ACCEPTED - REFUSED.keys())
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise _fail(
            f"unknown parameter {listed}: {unknown[0]!r} is not a Responses parameter this "
            "gateway translates",
            unknown[0],
        )
    background = body.get("background")
    if background is not None and background is not False:
        raise _fail(
            "background responses are not supported: the gateway holds a budget for the "
            "request's duration; send background: false",
            "background",
        )


# --------------------------------------------------------------------------- input


def _text_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    return {"type": "text", "text": _string(part.get("text"), f"{where}.text")}


def _image_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    if part.get("file_id") is not None:
        raise _fail(
            f"{where}.file_id is not supported: a file id names an upload at one provider; "
            "send image_url (a URL or a data: URL)",
            f"{where}.file_id",
        )
    url = _string(part.get("image_url"), f"{where}.image_url", empty=False)
    image: dict[str, Any] = {"url": url}
    detail = part.get("detail")
    if detail is not None:
        if not isinstance(detail, str) or detail not in _IMAGE_DETAILS:
            raise _fail(
                f"{where}.detail must be one of {sorted(_IMAGE_DETAILS)}", f"{where}.detail"
            )
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _file_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    for name in ("file_id", "file_url"):
        if part.get(name) is not None:
            raise _fail(
                f"{where}.{name} is not supported: send the file's bytes as file_data",
                f"{where}.{name}",
            )
    data = _string(part.get("file_data"), f"{where}.file_data", empty=False)
    file: dict[str, Any] = {"file_data": data}
    if part.get("filename") is not None:
        file["filename"] = _string(part.get("filename"), f"{where}.filename")
    return {"type": "file", "file": file}


def _parts(content: list[Any], where: str, role: str) -> list[dict[str, Any]]:
    allowed = (
        ("output_text", "refusal")
        if role == "assistant"
        else ("input_text",)
        if role in ("system", "developer")
        else ("input_text", "input_image", "input_file")
    )
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        pwhere = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise _fail(f"{pwhere} must be an object", pwhere)
        kind = part.get("type")
        if kind == "input_audio":
            raise _fail(_NO_AUDIO, pwhere)
        if kind not in allowed:
            raise _fail(
                f"{pwhere}.type must be one of {list(allowed)} in a {role} message",
                f"{pwhere}.type",
            )
        if kind in ("input_text", "output_text"):
            out.append(_text_part(part, pwhere))
        elif kind == "refusal":
            refusal = _string(part.get("refusal"), f"{pwhere}.refusal")
            out.append({"type": "refusal", "refusal": refusal})
        elif kind == "input_image":
            out.append(_image_part(part, pwhere))
        else:
            out.append(_file_part(part, pwhere))
    return out


def _content(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(
            f"{where}.content must be a string or an array of content parts", f"{where}.content"
        )
    parts = _parts(content, f"{where}.content", role)
    # Text alone as a string: the most widely understood chat content (an assistant
    # turn's text parts, a system prompt sent as one input_text part).
    if all(p["type"] == "text" for p in parts) and (role == "assistant" or len(parts) == 1):
        return "".join(p["text"] for p in parts)
    return parts


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _fail(f"{where}.role must be one of {sorted(_ROLES)}", f"{where}.role")
    if "content" not in item:
        raise _fail(f"{where}.content is required", f"{where}.content")
    return {"role": role, "content": _content(item["content"], where, role)}


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = _string(item.get("call_id"), f"{where}.call_id", empty=False)
    name = _string(item.get("name"), f"{where}.name", empty=False)
    arguments = _string(item.get("arguments"), f"{where}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = _string(item.get("call_id"), f"{where}.call_id", empty=False)
    output = item.get("output")
    content: str | list[dict[str, Any]]
    if isinstance(output, str):
        content = output
    elif isinstance(output, list):
        texts: list[dict[str, Any]] = []
        for j, part in enumerate(output):
            pwhere = f"{where}.output[{j}]"
            if not isinstance(part, dict) or part.get("type") != "input_text":
                raise _fail(
                    f"{pwhere} must be an input_text part: a chat-completions tool message "
                    "carries text only",
                    pwhere,
                )
            texts.append(_text_part(part, pwhere))
        content = texts[0]["text"] if len(texts) == 1 else texts
    else:
        raise _fail(
            f"{where}.output must be a string or an array of content parts", f"{where}.output"
        )
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _input(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _fail("input must be a string or an array of input items", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _fail(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            last = out[-1] if out else None
            # Calls after an assistant turn (or after each other) are that turn's calls.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(_tool_output(item, where))
        elif kind == "reasoning":
            continue  # a previous answer's reasoning: chat-completions takes none back
        elif kind == "item_reference":
            raise _fail(
                f"{where}: item references name items stored at the provider; send the item itself",
                f"{where}.type",
            )
        else:
            raise _fail(
                f"{where}.type must be 'message', 'function_call', 'function_call_output' or "
                "'reasoning' (items of hosted or custom tools have no chat-completions form)",
                f"{where}.type",
            )
    return out


# --------------------------------------------------------------------------- tools


def _tools(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(chat tools, Responses tools as echoed)."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise _fail("tools must be an array", "tools")
    chat: list[dict[str, Any]] = []
    echo: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _fail(f"{where} must be an object", where)
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise _fail(f"{where}.type must be a string", f"{where}.type")
        if kind in HOSTED_TOOLS:
            raise _fail(
                f"{where}.type {kind!r} {PRICED_APART} (per call, per session or per "
                "container), which this gateway's token budgets cannot cap; define a "
                "function tool and run it yourself",
                f"{where}.type",
            )
        if kind != "function":
            raise _fail(
                f"{where}.type must be 'function': this gateway translates function tools only",
                f"{where}.type",
            )
        function: dict[str, Any] = {"name": _string(tool.get("name"), f"{where}.name", empty=False)}
        if tool.get("description") is not None:
            function["description"] = _string(tool["description"], f"{where}.description")
        if tool.get("parameters") is not None:
            if not isinstance(tool["parameters"], dict):
                raise _fail(f"{where}.parameters must be an object", f"{where}.parameters")
            function["parameters"] = tool["parameters"]
        if tool.get("strict") is not None:
            if not isinstance(tool["strict"], bool):
                raise _fail(f"{where}.strict must be a boolean", f"{where}.strict")
            function["strict"] = tool["strict"]
        chat.append({"type": "function", "function": function})
        echo.append(
            {
                "type": "function",
                "name": function["name"],
                "description": function.get("description"),
                "parameters": function.get("parameters"),
                "strict": function.get("strict"),
            }
        )
    return chat, echo


def _tool_choice(value: Any) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str) and value in _TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = _string(value.get("name"), "tool_choice.name", empty=False)
        return {"type": "function", "function": {"name": name}}
    if isinstance(value, dict) and not isinstance(value.get("type"), str):
        raise _fail("tool_choice.type must be a string", "tool_choice.type")
    if isinstance(value, dict) and value.get("type") in HOSTED_TOOLS:
        raise _fail(f"tool_choice.type {value['type']!r} {PRICED_APART}", "tool_choice.type")
    raise _fail(
        "tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}",
        "tool_choice",
    )


# --------------------------------------------------------------------------- text, reasoning


def _text(value: Any) -> tuple[dict[str, Any] | None, str | None, dict[str, Any]]:
    """(chat response_format, verbosity, Responses text as echoed)."""
    if value is None:
        return None, None, {"format": {"type": "text"}}
    if not isinstance(value, dict):
        raise _fail("text must be an object", "text")
    unknown = sorted(value.keys() - {"format", "verbosity"})
    if unknown:
        raise _fail(f"unknown parameter 'text.{unknown[0]}'", f"text.{unknown[0]}")
    verbosity = value.get("verbosity")
    if verbosity is not None:
        _string(verbosity, "text.verbosity")
    fmt = value.get("format")
    echo: dict[str, Any] = {"format": {"type": "text"}}
    if verbosity is not None:
        echo["verbosity"] = verbosity
    if fmt is None:
        return None, verbosity, echo
    if not isinstance(fmt, dict):
        raise _fail("text.format must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None, verbosity, echo
    if kind == "json_object":
        echo["format"] = {"type": "json_object"}
        return {"type": "json_object"}, verbosity, echo
    if kind != "json_schema":
        raise _fail(
            "text.format.type must be 'text', 'json_object' or 'json_schema'", "text.format.type"
        )
    schema: dict[str, Any] = {"name": _string(fmt.get("name"), "text.format.name", empty=False)}
    if not isinstance(fmt.get("schema"), dict):
        raise _fail("text.format.schema must be an object", "text.format.schema")
    schema["schema"] = fmt["schema"]
    if fmt.get("description") is not None:
        schema["description"] = _string(fmt["description"], "text.format.description")
    if fmt.get("strict") is not None:
        if not isinstance(fmt["strict"], bool):
            raise _fail("text.format.strict must be a boolean", "text.format.strict")
        schema["strict"] = fmt["strict"]
    echo["format"] = {"type": "json_schema", **schema}
    return {"type": "json_schema", "json_schema": schema}, verbosity, echo


def _reasoning(value: Any) -> tuple[str | None, dict[str, Any]]:
    """(chat reasoning_effort, Responses reasoning as echoed)."""
    if value is None:
        return None, {"effort": None, "summary": None}
    if not isinstance(value, dict):
        raise _fail("reasoning must be an object", "reasoning")
    effort = value.get("effort")
    if effort is not None:
        _string(effort, "reasoning.effort", empty=False)
    # summary / generate_summary ask for a summary of the reasoning, which a
    # chat-completions model does not write: echoed, no effect.
    summary = value.get("summary", value.get("generate_summary"))
    if summary is not None:
        _string(summary, "reasoning.summary")
    return effort, {"effort": effort, "summary": summary}


def _include(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _fail("include must be an array", "include")
    for i, name in enumerate(value):
        where = f"include[{i}]"
        if name == "message.output_text.logprobs":
            raise _fail(
                f"{where}: log probabilities are not translated to the Responses API", where
            )
        if not isinstance(name, str) or name not in HARMLESS_INCLUDES:
            raise _fail(f"{where} is not a value this gateway knows", where)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _fail("metadata must be an object of strings", "metadata")
    if len(value) > 16:
        raise _fail("metadata may hold at most 16 keys", "metadata")
    if any(len(key) > 64 or len(item) > 512 for key, item in value.items()):
        raise _fail("metadata keys hold at most 64 characters and values 512", "metadata")
    return dict(value)


def _stream_options(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail("stream_options must be an object", "stream_options")
    for name, option in value.items():
        where = f"stream_options.{name}"
        if name != "include_obfuscation":
            raise _fail(
                f"unknown parameter {where!r}: stream_options may hold include_obfuscation", where
            )
        if not isinstance(option, bool):
            raise _fail(f"{where} must be a boolean", where)


# --------------------------------------------------------------------------- request


def parse_request(body: Any) -> ResponsesRequest:
    """Validate a decoded Responses create body and translate it to a chat body.

    Raises ValidationFailed naming the Responses field of the first problem."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", None)
    _refuse_fields(body)
    model = body.get("model")
    if model is not None:
        _string(model, "model", empty=False)
    previous = body.get("previous_response_id")
    if previous is not None:
        _string(previous, "previous_response_id", empty=False)
    instructions = _optional_string(body, "instructions")
    messages = _input(body.get("input"))
    if not messages and previous is None:
        raise _fail("input is required (a string or a non-empty array of items)", "input")
    tools, echo_tools = _tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"))
    if not tools and (choice == "required" or isinstance(choice, dict)):
        raise _fail("tool_choice asks for a tool, and tools is empty", "tool_choice")
    response_format, verbosity, echo_text = _text(body.get("text"))
    effort, echo_reasoning = _reasoning(body.get("reasoning"))
    max_output = body.get("max_output_tokens")
    if max_output is not None and (
        isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1
    ):
        raise _fail("max_output_tokens must be an integer of at least 1", "max_output_tokens")
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    parallel = _boolean(body, "parallel_tool_calls")
    stream = _boolean(body, "stream") is True
    store = _boolean(body, "store")
    _stream_options(body.get("stream_options"))
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise _fail("truncation must be 'auto' or 'disabled'", "truncation")
    _include(body.get("include"))
    metadata = _metadata(body.get("metadata"))
    user = _optional_string(body, "user")
    safety = _optional_string(body, "safety_identifier")
    tier = _optional_string(body, "service_tier")
    cache_key = _optional_string(body, "prompt_cache_key")

    chat: dict[str, Any] = {}
    if model is not None:
        chat["model"] = model
    chat["messages"] = _with_instructions(instructions, messages)
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if max_output is not None:
        chat["max_completion_tokens"] = max_output
    if temperature is not None:
        chat["temperature"] = temperature
    if top_p is not None:
        chat["top_p"] = top_p
    # Chat-completions refuses tool_choice and parallel_tool_calls without tools.
    if tools:
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if response_format is not None:
        chat["response_format"] = response_format
    if verbosity is not None:
        chat["verbosity"] = verbosity
    if effort is not None:
        chat["reasoning_effort"] = effort
    for name, value in (
        ("user", user),
        ("safety_identifier", safety),
        ("service_tier", tier),
        ("prompt_cache_key", cache_key),
    ):
        if value is not None:
            chat[name] = value
    if chat["messages"]:
        validate_chat_request(chat)  # the pipeline's own check: what it would refuse, now

    echo: dict[str, Any] = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "parallel_tool_calls": True if parallel is None else parallel,
        "previous_response_id": previous,
        "reasoning": echo_reasoning,
        "service_tier": tier,
        "store": True if store is None else store,
        "temperature": temperature,
        "text": echo_text,
        "tool_choice": _echo_choice(choice),
        "tools": echo_tools,
        "top_p": top_p,
        "truncation": truncation or "disabled",
        "user": user,
        "metadata": metadata,
        "safety_identifier": safety,
        "prompt_cache_key": cache_key,
    }
    return ResponsesRequest(
        chat=chat,
        messages=messages,
        instructions=instructions,
        model=model,
        stream=stream,
        store=echo["store"],
        previous_response_id=previous,
        metadata=metadata,
        echo=echo,
    )


def _echo_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any]:
    """tool_choice as a response repeats it (Responses' flat shape)."""
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return {"type": "function", "name": choice["function"]["name"]}


def _with_instructions(
    instructions: str | None, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    # "system", not "developer": every chat-completions server knows it.
    head = [{"role": "system", "content": instructions}] if instructions else []
    return head + messages


def continue_from(previous: list[dict[str, Any]], request: ResponsesRequest) -> dict[str, Any]:
    """The chat body of ``request`` after the stored chat messages of the previous
    response(s). This request's instructions lead; the previous ones are not carried
    over (as at OpenAI). Raises ValidationFailed if the result is no valid chat body."""
    chat = dict(request.chat)
    chat["messages"] = _with_instructions(request.instructions, [*previous, *request.messages])
    if not chat["messages"]:
        raise _fail("input is required (a string or a non-empty array of items)", "input")
    validate_chat_request(chat)
    return chat
