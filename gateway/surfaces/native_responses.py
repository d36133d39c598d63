"""OpenAI Responses passed through natively, pure: a Responses call routed to an
OpenAI upstream goes up in its own format and its answer comes back in it.

    rewrite_request(body, upstream_model, max_output_tokens)   the body, for upstream
    NativeResponsesStream(alias)                              upstream SSE bytes -> bytes
                                                              to relay + meter signals
    native_unary(response, alias)                             upstream response -> Usage
    response_usage(usage)                                     Responses usage -> Usage

Only the model and the output ceiling change: reasoning items (encrypted or
summarised), ``store``, ``previous_response_id``, ``include`` and every item type the
upstream sends survive; the response keeps the upstream's id (a stored response is
the upstream's to continue). Usage: ``input_tokens`` (cached ones included),
``input_tokens_details.cached_tokens``, ``output_tokens`` (reasoning included),
``output_tokens_details.reasoning_tokens``, and ``input_tokens_details.cache_write_tokens``
(explicit prompt caching's writes, within input_tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.providers.base import UpstreamStreamError
from gateway.providers.errortext import provider_code, with_code
from gateway.sse import SSEEvent, SSEParser, encode_event
from gateway.surfaces.native_messages import NativeOut, NativeSSEStream
from gateway.usage import MAX_REPORTED_TOKENS, Usage

__all__ = [
    "NativeOut",
    "NativeResponsesStream",
    "native_unary",
    "response_usage",
    "rewrite_request",
]

# Events whose ``delta`` string is generated output.
OUTPUT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)
# Output items whose announcement is itself generated (a tool's name).
_CALL_ITEMS = frozenset({"function_call", "custom_tool_call"})
# Terminal events of an answer that finished (with its final usage).
_FINISHED = frozenset({"response.completed", "response.incomplete"})
# Events the answer has not begun with: held back until something else comes, so that
# a failure right at the start has written nothing and the gateway may still retry.
_PREAMBLE = frozenset({"response.created", "response.in_progress", "response.queued"})
_DONE = b"[DONE]"


def rewrite_request(
    body: Mapping[str, Any], upstream_model: str, max_output_tokens: int
) -> dict[str, Any]:
    """The client's Responses body for the upstream: ``model`` the route's,
    ``max_output_tokens`` the clamped ceiling, every other member as it came (``store``,
    ``previous_response_id``, ``include``, ...; a shallow copy: nested values are shared,
    the input is not changed). The final response always carries the usage: nothing
    else to request."""
    out = dict(body)
    out["model"] = upstream_model
    out["max_output_tokens"] = max_output_tokens
    return out


def _count(value: Any) -> int | None:
    """A token count: an int (not a bool) in [0, MAX_REPORTED_TOKENS], else None."""
    if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


def response_usage(usage: Any) -> Usage | None:
    """A Responses ``usage`` object as the gateway's Usage. None unless input_tokens and
    output_tokens are integers in [0, 10**12] (as gateway.usage.from_openai); details
    of the wrong shape count 0, and never more than the total they are part of."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    prompt_details = usage.get("input_tokens_details")
    completion_details = usage.get("output_tokens_details")
    if not isinstance(prompt_details, dict):
        prompt_details = {}
    if not isinstance(completion_details, dict):
        completion_details = {}
    cached = min(_count(prompt_details.get("cached_tokens")) or 0, prompt)
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cached_input_tokens=cached,
        reasoning_tokens=min(_count(completion_details.get("reasoning_tokens")) or 0, completion),
        # Explicit prompt caching reports its writes here (priced as cache writes).
        cache_creation_input_tokens=min(
            _count(prompt_details.get("cache_write_tokens")) or 0, prompt - cached
        ),
    )


def _restamp(response: dict[str, Any], alias: str) -> dict[str, Any]:
    return {**response, "model": alias}


def native_unary(response: Any, alias: str) -> tuple[dict[str, Any], Usage | None]:
    """An upstream response object for the client: ``model`` the alias, the rest as it
    came (a copy); and its Usage (None: none usable). ValueError if it is no response."""
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        raise ValueError("not a Responses response")
    return _restamp(response, alias), response_usage(response.get("usage"))


def _invalid(what: str) -> UpstreamStreamError:
    return UpstreamStreamError("upstream_error", f"the provider sent {what}")


class NativeResponsesStream(NativeSSEStream):
    """A Responses stream relayed as it is (pure, incremental): upstream SSE bytes in any
    splits to ``feed``, ``close`` at the end of the body; each returns a
    :class:`~gateway.surfaces.native_messages.NativeOut`.

    Each event is relayed with its data as received, but those carrying a ``response``
    object (created, in_progress, completed, incomplete, ...), whose ``model`` becomes the
    ``alias`` (re-serialized). The preamble (created, in_progress, queued) is held back
    until the first other event. ``response.completed`` / ``response.incomplete`` finish
    the answer with its usage and end the stream. ``response.failed`` and ``error``
    (``declared``), invalid JSON, an event of the wrong shape or one over
    gateway.sse.MAX_EVENT_BYTES fail it: not relayed (the gateway writes its own error
    event), the bytes before it are, and the failure is ``error`` on the NativeOut and
    on the stream, raised by ``check()`` and by any later call. A body that ends before
    the answer finished was cut (``close`` fails it).
    """

    def __init__(self, alias: str, secret: str = "") -> None:
        self.alias = alias
        self.secret = secret  # the provider key: no error code relayed may resemble it
        self.parser = SSEParser()
        self.begun = False  # bytes of the answer went out (nothing is retried after that)
        self.finished = False
        self.done = False
        self.error: UpstreamStreamError | None = None
        self.usage: Usage | None = None
        self._held: list[bytes] = []

    def _out(self, out: list[bytes], deltas: int) -> NativeOut:
        return NativeOut(
            data=b"".join(out),
            deltas=deltas,
            finished=self.finished,
            done=self.done,
            usage=self.usage,
            usage_final=self.finished and self.usage is not None,
            error=self.error,
        )

    def _fail(self, error: Any) -> UpstreamStreamError:
        code = provider_code(error, self.secret)
        return UpstreamStreamError(
            "upstream_error", with_code("the provider reported an error", code), declared=True
        )

    def _event(self, event: SSEEvent, out: list[bytes]) -> int:
        """Relay one event into ``out``; the number of generated-output events (0 or 1)."""
        if event.data == _DONE:
            return 0  # some compatible servers end with it; OpenAI's Responses does not
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise _invalid("invalid JSON") from exc
        if not isinstance(data, dict):
            raise _invalid("an invalid event")
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = event.event or ""
        if kind == "error" or event.event == "error":
            error = data.get("error")
            raise self._fail(error if isinstance(error, dict) else data)
        payload = event.data
        generated = 0
        response = data.get("response")
        if response is not None:
            if not isinstance(response, dict):
                raise _invalid("an invalid response")
            if kind == "response.failed":
                self.usage = response_usage(response.get("usage")) or self.usage
                raise self._fail(response.get("error"))
            if kind in _FINISHED:
                self.usage = response_usage(response.get("usage"))
                self.finished = self.done = True
            data["response"] = _restamp(response, self.alias)
            payload = orjson.dumps(data)
        elif kind in _FINISHED or kind == "response.failed":
            raise _invalid(f"{kind} without its response")
        elif kind in OUTPUT_DELTAS:
            delta = data.get("delta")
            generated = int(isinstance(delta, str) and bool(delta))
        elif kind == "response.output_item.added":
            item = data.get("item")
            generated = int(isinstance(item, dict) and item.get("type") in _CALL_ITEMS)
        encoded = encode_event(payload, event.event or kind or None)
        if self.begun:
            out.append(encoded)
        elif kind in _PREAMBLE:
            self._held.append(encoded)
        else:
            self.begun = True
            out.extend(self._held)
            self._held.clear()
            out.append(encoded)
        return generated
