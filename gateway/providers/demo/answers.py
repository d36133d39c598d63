"""What the demo provider answers, pure: a request body in, its choices out.

One token per streamed piece: a word (with the spaces after it) of text or of JSON, a
fragment of a tool call's arguments, and the tool call's first delta (its name). The
prompt counts one token per ~4 bytes of what the model reads. Each choice honours the
request's ``stop`` strings (text only) and its output ceiling (``max_completion_tokens``
or ``max_tokens``: per choice, as the gateway sends it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import ValidationFailed
from gateway.providers.demo.schema import TooLarge, schema_instance

_REPLY = (
    "Hello from the karta demo provider{tag}. This answer is generated offline, word by "
    "word, so you can watch streaming, usage accounting and budgets work without a "
    "provider key. You said: "
)
_AFTER_TOOL = "The karta demo provider{tag} got the tool result: "
_ECHOED_WORDS = 24
_PIECE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Choice:
    """One answer: text (``tool`` None) or one tool call, as the pieces streamed."""

    index: int
    pieces: tuple[str, ...]  # content words, or the tool call's argument fragments
    finish_reason: str
    tool: ToolCall | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + (self.tool is not None)


def answer(body: dict[str, Any]) -> list[Choice]:
    """The ``n`` choices (index 0..n-1) the demo gives to an OpenAI-shaped request."""
    n = body.get("n") or 1
    ceiling = body.get("max_completion_tokens") or body.get("max_tokens")
    tool = _tool_to_call(body)
    stops = _stops(body.get("stop"))
    choices = []
    for index in range(n):
        tag = f" (choice {index + 1} of {n})" if n > 1 else ""
        if tool is not None:
            call = ToolCall(f"call_demo_{index}", str(tool.get("name", "")))
            parameters = _parameters(tool)
            arguments = json.dumps(_instance(parameters, index, "tools.function.parameters"))
            # The call's first delta (its name) is a token too.
            budget = None if ceiling is None else ceiling - 1
            pieces, cut = _limit(tokens(arguments), budget)
            choices.append(Choice(index, pieces, "length" if cut else "tool_calls", call))
            continue
        text = cut_at_stop(_content(body, index, tag), stops)
        pieces, cut = _limit(tokens(text), ceiling)
        choices.append(Choice(index, pieces, "length" if cut else "stop"))
    return choices


def tokens(text: str) -> list[str]:
    """The toy tokenizer: each word with the whitespace after it (they join to ``text``)."""
    return _PIECE.findall(text)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to (not including) the first occurrence of any stop string."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(found)] if found else text


def prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens: ~4 bytes each of every message and of the tools and response
    format the model reads, plus a few per message."""
    total = 3
    for message in body["messages"]:
        read = _message_text(message.get("content"))
        if message.get("tool_calls"):
            read += json.dumps(message["tool_calls"])
        total += 4 + _bytes_tokens(read)
    for extra in ("tools", "response_format"):
        if body.get(extra):
            total += _bytes_tokens(json.dumps(body[extra]))
    return total


def _bytes_tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _limit(pieces: list[str], ceiling: int | None) -> tuple[tuple[str, ...], bool]:
    """The pieces within the ceiling, and whether it cut them."""
    if ceiling is None or len(pieces) <= ceiling:
        return tuple(pieces), False
    return tuple(pieces[: max(ceiling, 0)]), True


def _stops(stop: Any) -> list[str]:
    if isinstance(stop, str):
        stop = [stop]
    return [s for s in stop or () if isinstance(s, str) and s]


def _content(body: dict[str, Any], index: int, tag: str) -> str:
    """The text of choice ``index``: prose, or JSON when ``response_format`` asks."""
    messages = body["messages"]
    if messages[-1].get("role") == "tool":
        prose = _AFTER_TOOL.format(tag=tag) + _echo(_message_text(messages[-1].get("content")))
    else:
        prose = _REPLY.format(tag=tag) + _echo(_last_user_text(messages))
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return prose
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is not None:
            if not isinstance(schema, dict | bool):
                raise ValidationFailed(
                    "response_format.json_schema.schema must be a JSON schema object",
                    "response_format.json_schema.schema",
                )
            return json.dumps(_instance(schema, index, "response_format.json_schema.schema"))
    if kind in ("json_object", "json_schema"):
        return json.dumps({"answer": prose})
    return prose


def _instance(schema: Any, index: int, param: str) -> Any:
    try:
        return schema_instance(schema, index)
    except TooLarge as exc:
        raise ValidationFailed(f"{param}: {exc}", param) from None


def _echo(text: str) -> str:
    return " ".join(text.split()[:_ECHOED_WORDS]) or "nothing"


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def _tool_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function the answer calls: the one ``tool_choice`` names, else the first of
    ``tools``. None (a text answer) without function tools, with ``tool_choice`` "none",
    or, unless a call is forced, right after a tool result (an agent loop must end)."""
    functions: list[dict[str, Any]] = [
        t["function"]
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        named = choice.get("function")
        name = named.get("name") if isinstance(named, dict) else None
        for function in functions:
            if function.get("name") == name:
                return function
        raise ValidationFailed("tool_choice names a function that is not in tools", "tool_choice")
    if choice in (None, "auto") and body["messages"][-1].get("role") == "tool":
        return None
    return functions[0]


def _parameters(function: dict[str, Any]) -> dict[str, Any] | bool:
    parameters = function.get("parameters")
    if parameters is None:
        return {"type": "object"}
    if not isinstance(parameters, dict):
        raise ValidationFailed(
            "a function's parameters must be a JSON schema object", "tools.function.parameters"
        )
    return parameters
