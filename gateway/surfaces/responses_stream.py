"""Chat-completion chunks -> Responses server-sent events, pure and stateful.

One ResponsesStream per streamed request (n=1): ``start()``, then ``feed(chunk)`` for
each chat.completion.chunk dict, then ``finish(usage)`` or ``fail(code, message)``.
Each returns the SSE bytes to send (``event: <type>`` + ``data: <json>``, every event
numbered by ``sequence_number``), in the order and shapes the official SDKs' stream
accumulators expect:

    response.created, response.in_progress
    per output item: response.output_item.added,
        message:   response.content_part.added, response.output_text.delta* (or
                   response.refusal.delta*), response.output_text.done (.refusal.done),
                   response.content_part.done
        reasoning: the same with response.reasoning_text.delta / .done
        function call: response.function_call_arguments.delta*, ...arguments.done
      response.output_item.done
    response.completed | response.incomplete (finish_reason length / content_filter)
    | response.failed followed by error

Items close when the next kind of item starts (text after reasoning, a tool call after
text) or at the finish_reason; function calls stay open until the finish_reason, so
argument fragments of parallel calls may interleave as the chat stream sends them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.ids import new_id
from gateway.sse import encode_event
from gateway.surfaces.responses_output import (
    error_object,
    finish_status,
    function_call_item,
    message_item,
    new_item_id,
    output_text_part,
    reasoning_item,
    reasoning_part,
    refusal_part,
    response_object,
)
from gateway.surfaces.responses_request import ResponsesRequest
from gateway.usage import Usage

# The delta and done event of each content part type, and the done event's text field.
_PART_EVENTS = {
    "output_text": ("response.output_text.delta", "response.output_text.done", "text"),
    "refusal": ("response.refusal.delta", "response.refusal.done", "refusal"),
    "reasoning_text": ("response.reasoning_text.delta", "response.reasoning_text.done", "text"),
}


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return output_text_part(text)
    if kind == "refusal":
        return refusal_part(text)
    return reasoning_part(text)


@dataclass(slots=True)
class _Content:
    """A message or reasoning item being streamed."""

    output_index: int
    item_id: str
    kind: str  # "message" | "reasoning"
    parts: list[dict[str, Any]] = field(default_factory=list)  # closed parts
    part_kind: str | None = None  # the open part's type
    part_text: list[str] = field(default_factory=list)
    done: bool = False

    def render(self, status: str) -> dict[str, Any]:
        parts = list(self.parts)
        if self.part_kind is not None:
            parts.append(_part(self.part_kind, "".join(self.part_text)))
        if self.kind == "message":
            return message_item(self.item_id, parts, status)
        return reasoning_item(self.item_id, parts, status)


@dataclass(slots=True)
class _Call:
    """A function call being streamed; an output item once its name is known."""

    item_id: str
    output_index: int | None = None
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    done: bool = False

    def render(self, status: str) -> dict[str, Any]:
        return function_call_item(
            self.item_id, self.call_id, self.name, "".join(self.arguments), status
        )


class ResponsesStream:
    """The Responses event stream of one streamed request (see the module docstring)."""

    def __init__(
        self,
        response_id: str,
        model: str,
        request: ResponsesRequest,
        created_at: int | None = None,
    ) -> None:
        self.response_id = response_id
        self.model = model
        self.request = request
        self.created_at = int(time.time()) if created_at is None else created_at
        # The final response object, once finish() or fail() has run.
        self.response: dict[str, Any] | None = None
        self._sequence = 0
        self._started = False
        self._items: list[_Content | _Call] = []  # output items, by output_index
        self._open: _Content | None = None
        self._calls: dict[int, _Call] = {}  # by chat tool_calls index
        self._last_call: int | None = None
        self._finish_reason: str | None = None
        self._closed = False  # every item closed (finish_reason seen)

    # ------------------------------------------------------------------ public

    def start(self) -> bytes:
        """response.created and response.in_progress (once)."""
        if self._started:
            return b""
        self._started = True
        response = self._response("in_progress", [])
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events of one chat.completion.chunk (choice 0 only: n=1)."""
        out = [self.start()]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if self._closed or self.response is not None:
                break
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            for key in ("reasoning_content", "reasoning"):
                reasoning = delta.get(key)
                if isinstance(reasoning, str) and reasoning:
                    out.append(self._text("reasoning", "reasoning_text", reasoning))
                    break
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(self._text("message", "output_text", content))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                out.append(self._text("message", "refusal", refusal))
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    out.append(self._tool_delta(call))
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self._finish_reason = finish
                out.append(self._close_all())
        return b"".join(out)

    def finish(self, usage: Usage) -> bytes:
        """Close what is open; response.completed, or response.incomplete when the
        answer was cut (finish_reason length or content_filter)."""
        if self.response is not None:
            return b""
        out = [self.start(), self._close_all()]
        status, reason = finish_status(self._finish_reason)
        response = self._response(
            status,
            [item.render(self._item_status()) for item in self._items],
            usage=usage,
            incomplete_reason=reason,
            completed_at=int(time.time()) if status == "completed" else None,
        )
        self.response = response
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, response=response))
        return b"".join(out)

    def fail(self, code: str, message: str, usage: Usage | None = None) -> bytes:
        """response.failed (the output so far, its open items incomplete) and an error
        event carrying ``code``. ``message`` goes to the client: no secrets in it."""
        if self.response is not None:
            return b""
        out = [self.start()]
        output = [item.render("completed" if item.done else "incomplete") for item in self._items]
        response = self._response("failed", output, usage=usage, error=error_object(code, message))
        self.response = response
        out.append(self._event("response.failed", response=response))
        out.append(self._event("error", code=code, message=message, param=None))
        return b"".join(out)

    # ------------------------------------------------------------------ events

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return encode_event(orjson.dumps(payload), kind)

    def _response(self, status: str, output: list[dict[str, Any]], **rest: Any) -> dict[str, Any]:
        return response_object(
            response_id=self.response_id,
            model=self.model,
            request=self.request,
            created_at=self.created_at,
            status=status,
            output=output,
            **rest,
        )

    def _item_status(self) -> str:
        return "completed" if finish_status(self._finish_reason)[0] == "completed" else "incomplete"

    # ------------------------------------------------------------------ text items

    def _text(self, kind: str, part_kind: str, text: str) -> bytes:
        out: list[bytes] = []
        item = self._open
        if item is not None and item.kind != kind:
            out.append(self._close_content(item, "completed"))
            item = None
        if item is None:
            item = _Content(
                len(self._items), new_item_id("msg" if kind == "message" else "rs"), kind
            )
            self._items.append(item)
            self._open = item
            out.append(
                self._event(
                    "response.output_item.added",
                    output_index=item.output_index,
                    item=item.render("in_progress"),
                )
            )
        if item.part_kind != part_kind:
            out.append(self._close_part(item))
            item.part_kind = part_kind
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.item_id,
                    output_index=item.output_index,
                    content_index=len(item.parts),
                    part=_part(part_kind, ""),
                )
            )
        item.part_text.append(text)
        delta_event = _PART_EVENTS[part_kind][0]
        extra: dict[str, Any] = {"logprobs": []} if part_kind == "output_text" else {}
        out.append(
            self._event(
                delta_event,
                item_id=item.item_id,
                output_index=item.output_index,
                content_index=len(item.parts),
                delta=text,
                **extra,
            )
        )
        return b"".join(out)

    def _close_part(self, item: _Content) -> bytes:
        kind = item.part_kind
        if kind is None:
            return b""
        text = "".join(item.part_text)
        _, done_event, field_name = _PART_EVENTS[kind]
        where = {
            "item_id": item.item_id,
            "output_index": item.output_index,
            "content_index": len(item.parts),
        }
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        part = _part(kind, text)
        out = self._event(done_event, **where, **{field_name: text}, **extra)
        out += self._event("response.content_part.done", **where, part=part)
        item.parts.append(part)
        item.part_kind = None
        item.part_text = []
        return out

    def _close_content(self, item: _Content, status: str) -> bytes:
        out = self._close_part(item)
        item.done = True
        if self._open is item:
            self._open = None
        return out + self._event(
            "response.output_item.done", output_index=item.output_index, item=item.render(status)
        )

    # ------------------------------------------------------------------ function calls

    def _tool_delta(self, delta: dict[str, Any]) -> bytes:
        index = delta.get("index")
        call_id = delta.get("id")
        if type(index) is not int:
            # No index (some compatible servers): a new id is a new call.
            known = any(c.call_id == call_id for c in self._calls.values())
            new = isinstance(call_id, str) and call_id and not known
            index = len(self._calls) if new or self._last_call is None else self._last_call
        self._last_call = index
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _Call(new_item_id("fc"))
        if call.done:
            return b""  # a fragment after its call was closed: nothing can carry it
        if isinstance(call_id, str) and call_id and not call.call_id:
            call.call_id = call_id
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name  # later names (some servers repeat it) change nothing
        arguments = function.get("arguments")
        fragment = arguments if isinstance(arguments, str) else ""
        out: list[bytes] = []
        if call.output_index is None:
            call.arguments.append(fragment)
            if call.name:
                out.append(self._add_call(call))
            return b"".join(out)
        if fragment:
            call.arguments.append(fragment)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=fragment,
                )
            )
        return b"".join(out)

    def _add_call(self, call: _Call) -> bytes:
        """Make ``call`` an output item; send what arrived before its name."""
        out: list[bytes] = []
        if self._open is not None:
            out.append(self._close_content(self._open, "completed"))
        if not call.call_id:
            call.call_id = f"call_{new_id()}"
        call.output_index = len(self._items)
        self._items.append(call)
        buffered = "".join(call.arguments)
        call.arguments = []
        out.append(
            self._event(
                "response.output_item.added",
                output_index=call.output_index,
                item=call.render("in_progress"),
            )
        )
        if buffered:
            call.arguments.append(buffered)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=buffered,
                )
            )
        return b"".join(out)

    def _close_call(self, call: _Call, status: str) -> bytes:
        out = b""
        if call.output_index is None:
            out = self._add_call(call)  # never named: still the client's to see
        call.done = True
        arguments = "".join(call.arguments)
        out += self._event(
            "response.function_call_arguments.done",
            item_id=call.item_id,
            output_index=call.output_index,
            arguments=arguments,
        )
        return out + self._event(
            "response.output_item.done", output_index=call.output_index, item=call.render(status)
        )

    def _close_all(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        status = self._item_status()
        out: list[bytes] = []
        if self._open is not None:
            out.append(self._close_content(self._open, status))
        # Calls in output order; unnamed ones after them.
        calls = sorted(
            (c for c in self._calls.values() if not c.done),
            key=lambda c: len(self._items) if c.output_index is None else c.output_index,
        )
        for call in calls:
            out.append(self._close_call(call, status))
        return b"".join(out)
