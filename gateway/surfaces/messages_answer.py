"""Anthropic Messages API surface, answer side, pure: the gateway's chat answers as
Anthropic's.

* :class:`MessagesStream`: ``chat.completion.chunk`` dicts in, Anthropic SSE bytes out
  (``message_start``, content blocks, ``message_delta`` with the stop reason and the
  final usage, ``message_stop``; ``error`` events for failures).
* :func:`unary_message`: a ``chat.completion`` as an Anthropic ``Message``.
* :func:`error_body`: a gateway failure in Anthropic's error shape.

Usage (:class:`gateway.usage.Usage`, whose ``input_tokens`` include cache reads and
writes) becomes Anthropic's, whose ``input_tokens`` are the uncached ones beside
``cache_read_input_tokens`` and ``cache_creation_input_tokens``; the reasoning tokens
are ``output_tokens_details.thinking_tokens`` (within ``output_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.sse import encode_event
from gateway.usage import Usage

__all__ = [
    "ERROR_TYPES",
    "MessagesStream",
    "anthropic_usage",
    "error_body",
    "error_type",
    "stop_reason",
    "unary_message",
]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# HTTP status -> Anthropic's error type, as the Anthropic API and its SDKs name them.
# 402 is "billing_error" (the SDK raises PaymentRequiredError and shows the message);
# 503, the gateway's "cannot answer now" (budget store unreachable, provider key not
# configured), is "overloaded_error", which clients retry like Anthropic's 529.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_TYPES = frozenset(ERROR_TYPES.values())


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (other 4xx: invalid_request_error,
    other 5xx: api_error)."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _error(kind: str, message: str, code: str) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        # The SDKs read error.details.error_code as the cause's stable name.
        error["details"] = {"error_code": code}
    return {"type": "error", "error": error}


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message", "details": {"error_code"}}}``:
    the type by status (:data:`ERROR_TYPES`), the gateway's code as the error code."""
    return _error(error_type(status), message, code)


def _stream_error_type(code: str) -> str:
    """The Anthropic error type of a failure mid-stream, from the gateway's code."""
    if code in _ANTHROPIC_TYPES:
        return code
    if "timeout" in code:
        return "timeout_error"
    if "rate_limit" in code:
        return "rate_limit_error"
    if "overloaded" in code or code == "gateway_shutdown":
        return "overloaded_error"  # transient: another attempt may succeed
    return "api_error"


def _count(value: int) -> int:
    return max(value, 0)


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """The gateway's usage in Anthropic's shape (input_tokens: the uncached ones)."""
    read = _count(usage.cached_input_tokens)
    written = _count(usage.cache_creation_input_tokens)
    out: dict[str, Any] = {
        "input_tokens": _count(usage.input_tokens - read - written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": _count(usage.output_tokens),
    }
    if usage.reasoning_tokens > 0:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def stop_reason(finish_reason: Any) -> str:
    """A chat finish_reason as Anthropic's stop_reason (end_turn when unknown)."""
    return (
        _STOP_REASONS.get(finish_reason, "end_turn")
        if isinstance(finish_reason, str)
        else "end_turn"
    )


def _stop(choice: dict[str, Any]) -> tuple[str, str | None]:
    """stop_reason and stop_sequence of a chat choice. Chat finish reasons do not tell a
    stop sequence from a natural stop; servers that say which sequence matched (vLLM's
    ``stop_reason`` string) give ``stop_sequence``."""
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched:
        return "stop_sequence", matched
    return stop_reason(finish), None


def _arguments(raw: Any) -> dict[str, Any]:
    """Tool call arguments as a tool_use input: a JSON object, else ``{}`` (the client's
    schema check then reports the call as malformed)."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        if isinstance(parsed, dict):
            return parsed
    return {}


def _text(value: Any) -> str:
    """Message content as text: a string, or the text of its text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part["text"]
            for part in value
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def _reasoning(holder: dict[str, Any]) -> str:
    """Reasoning text of a message or delta (``reasoning_content``, or ``reasoning``)."""
    for name in ("reasoning_content", "reasoning"):
        value = holder.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def unary_message(
    completion: dict[str, Any], usage: Usage, message_id: str, model: str
) -> dict[str, Any]:
    """A ``chat.completion`` (its first choice) as an Anthropic ``Message``: reasoning
    as a thinking block (with an empty signature: chat models sign nothing), the text,
    then one tool_use block per tool call; ``model`` is the alias the client asked for."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        choice = {}
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text(message.get("content"))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        text = text + refusal if text else refusal
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id")
        name = function.get("name")
        content.append(
            {
                "type": "tool_use",
                "id": call_id
                if isinstance(call_id, str) and call_id
                else f"toolu_{message_id}_{i}",
                "name": name if isinstance(name, str) else "",
                "input": _arguments(function.get("arguments")),
            }
        )
    reason, sequence = _stop(choice)
    if reason == "end_turn" and isinstance(refusal, str) and refusal:
        reason = "refusal"
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(usage),
    }


# --------------------------------------------------------------------------- stream


@dataclass(slots=True, eq=False)  # compared by identity
class _Block:
    """One content block being streamed, or held until the answer ends."""

    kind: str  # "text" | "thinking" | "tool_use"
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""
    index: int | None = None  # its Anthropic index, once started


class MessagesStream:
    """chat.completion.chunk dicts in, Anthropic Messages SSE bytes out (pure).

    ``start`` (``message_start``), ``feed`` each chunk, then ``finish`` with the usage
    to report (``message_delta`` with the stop reason and usage, ``message_stop``) or
    ``fail`` (an ``error`` event). Every call returns the bytes to send (maybe none);
    after ``finish`` or ``fail`` nothing more is sent.

    Anthropic's blocks are sequential while a chat stream's tool calls are addressed by
    index and may interleave: text and thinking stream as they come, and so does the
    first tool call; whatever arrives while a tool call streams (another tool call,
    more text) is held and sent, each block whole, when the choice finishes. A tool
    call whose first delta has no name is held likewise (a block starts with its name).
    """

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.started = False
        self.done = False
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self._next = 0  # the next block's index
        self._live: _Block | None = None  # the block being streamed
        self._held: list[_Block] = []  # blocks sent whole at the end, in arrival order
        self._tools: dict[int, _Block] = {}  # chat tool call index -> its block

    # ------------------------------------------------------------------ events

    @staticmethod
    def _event(kind: str, data: dict[str, Any]) -> bytes:
        return encode_event(orjson.dumps({"type": kind, **data}), kind)

    def ping(self) -> bytes:
        """A keep-alive ``ping`` event (clients ignore it); nothing once ended."""
        return b"" if self.done else self._event("ping", {})

    def start(self, input_tokens_estimate: int) -> bytes:
        """``message_start``; its input_tokens is the estimate given (the final count
        follows in ``message_delta``)."""
        if self.started or self.done:
            return b""
        self.started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": _count(input_tokens_estimate),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return self._event("message_start", {"message": message})

    def _begin(self, block: _Block, out: list[bytes]) -> None:
        block.index = self._next
        self._next += 1
        start: dict[str, Any]
        if block.kind == "text":
            start = {"type": "text", "text": ""}
        elif block.kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            # A call without an id still needs one: its result names it.
            block.id = block.id or f"toolu_{self.message_id}_{block.index}"
            start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        out.append(
            self._event("content_block_start", {"index": block.index, "content_block": start})
        )

    def _delta(self, block: _Block, piece: str, out: list[bytes]) -> None:
        if not piece:
            return
        delta: dict[str, Any]
        if block.kind == "text":
            delta = {"type": "text_delta", "text": piece}
        elif block.kind == "thinking":
            delta = {"type": "thinking_delta", "thinking": piece}
        else:
            delta = {"type": "input_json_delta", "partial_json": piece}
        out.append(self._event("content_block_delta", {"index": block.index, "delta": delta}))

    def _stop_block(self, block: _Block, out: list[bytes]) -> None:
        out.append(self._event("content_block_stop", {"index": block.index}))

    def _go_live(self, block: _Block, out: list[bytes]) -> None:
        self._close_live(out)
        self._live = block
        self._begin(block, out)
        self._delta(block, "".join(block.parts), out)
        block.parts.clear()

    def _close_live(self, out: list[bytes]) -> None:
        if self._live is not None:
            self._stop_block(self._live, out)
            self._live = None

    def _flush(self, out: list[bytes]) -> None:
        """Close the live block, then send every held block whole."""
        self._close_live(out)
        held, self._held = self._held, []
        for block in held:
            self._begin(block, out)
            self._delta(block, "".join(block.parts), out)
            self._stop_block(block, out)
        self._tools.clear()

    # ------------------------------------------------------------------ content

    def _content(self, kind: str, piece: str, out: list[bytes]) -> None:
        live = self._live
        if live is not None and live.kind == "tool_use":
            last = self._held[-1] if self._held else None
            if last is None or last.kind != kind:
                last = _Block(kind)
                self._held.append(last)
            last.parts.append(piece)
        elif live is not None and live.kind == kind:
            self._delta(live, piece, out)
        else:
            self._go_live(_Block(kind, [piece]), out)

    def _tool_call(self, position: int, call: dict[str, Any], out: list[bytes]) -> None:
        index = call.get("index")
        key = index if isinstance(index, int) and not isinstance(index, bool) else position
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        call_id = call.get("id")
        arguments = function.get("arguments")
        piece = arguments if isinstance(arguments, str) else ""
        block = self._tools.get(key)
        if block is None:
            block = self._tools[key] = _Block("tool_use")
        if isinstance(call_id, str) and call_id and not block.id:
            block.id = call_id
        if isinstance(name, str) and name and not block.name:
            block.name = name
        if block is self._live:
            self._delta(block, piece, out)
            return
        block.parts.append(piece)
        if block in self._held:
            return
        if block.name and (self._live is None or self._live.kind != "tool_use"):
            self._go_live(block, out)
        else:  # another tool call is streaming, or this one has no name yet
            self._held.append(block)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events for one chat chunk (its first choice; usage-only chunks: none)."""
        if self.done:
            return b""
        out: list[bytes] = []
        if not self.started:
            out.append(self.start(0))
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return b"".join(out)
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        reasoning = _reasoning(delta)
        if reasoning:
            self._content("thinking", reasoning, out)
        for name in ("content", "refusal"):
            text = delta.get(name)
            if isinstance(text, str) and text:
                self._content("text", text, out)
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                self._tool_call(position, call, out)
        if isinstance(choice.get("finish_reason"), str):
            self.stop_reason, self.stop_sequence = _stop(choice)
            self._flush(out)
        return b"".join(out)

    # ------------------------------------------------------------------ the end

    def finish(self, usage: Usage) -> bytes:
        """Close the blocks, then ``message_delta`` (stop reason; usage: the Usage given,
        cumulative, as Anthropic's final counts are) and ``message_stop``."""
        if self.done:
            return b""
        out: list[bytes] = []
        if not self.started:
            out.append(self.start(usage.input_tokens))
        self._flush(out)
        self.done = True
        delta = {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": self.stop_sequence}
        out.append(self._event("message_delta", {"delta": delta, "usage": anthropic_usage(usage)}))
        out.append(self._event("message_stop", {}))
        return b"".join(out)

    def fail(self, code: str, message: str) -> bytes:
        """An ``error`` event ending the stream: ``code`` (an Anthropic error type, or the
        gateway's stream failure code, kept as ``details.error_code``) and ``message``."""
        if self.done:
            return b""
        self.done = True
        body = _error(_stream_error_type(code), message, code)
        return encode_event(orjson.dumps(body), "error")
