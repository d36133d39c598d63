"""Responses ``response`` objects and their output items, pure: from a chat.completion
(unary) or from what a stream built (gateway.surfaces.responses_stream), and back to
the chat messages stored for a later ``previous_response_id``."""

from __future__ import annotations

import time
from typing import Any

from gateway.ids import new_id
from gateway.surfaces.responses_request import ResponsesRequest
from gateway.usage import Usage

# ResponseError codes the SDKs' types enumerate; any other code is reported as
# server_error in the response object (the stream's error event keeps the gateway's).
RESPONSE_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})


def new_response_id() -> str:
    return f"resp_{new_id()}"


def new_item_id(prefix: str) -> str:
    """An output item's id: ``msg`` (message), ``fc`` (function call), ``rs`` (reasoning)."""
    return f"{prefix}_{new_id()}"


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_creation_input_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def finish_status(finish_reason: Any) -> tuple[str, str | None]:
    """(response status, incomplete_details.reason) for a chat finish_reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def refusal_part(text: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text}


def reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def reasoning_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def response_object(
    *,
    response_id: str,
    model: str,
    request: ResponsesRequest,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None = None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """A ``response`` object: its state, its output, and the request fields it repeats."""
    echo = request.echo
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": echo.get("previous_response_id"),
        "reasoning": echo.get("reasoning", {"effort": None, "summary": None}),
        "service_tier": echo.get("service_tier"),
        "store": echo.get("store", True),
        "temperature": echo.get("temperature"),
        "text": echo.get("text", {"format": {"type": "text"}}),
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools", []),
        "top_p": echo.get("top_p"),
        "truncation": echo.get("truncation", "disabled"),
        "usage": usage_object(usage) if usage is not None else None,
        "user": echo.get("user"),
        "metadata": echo.get("metadata", {}),
        "safety_identifier": echo.get("safety_identifier"),
        "prompt_cache_key": echo.get("prompt_cache_key"),
    }


def error_object(code: str, message: str) -> dict[str, Any]:
    return {"code": code if code in RESPONSE_ERROR_CODES else "server_error", "message": message}


def _reasoning_text(message: dict[str, Any]) -> str:
    # reasoning_content: DeepSeek, vLLM, Qwen; reasoning: Groq, OpenRouter, newer vLLM.
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def unary_response(
    completion: dict[str, Any],
    usage: Usage,
    response_id: str,
    model: str,
    request: ResponsesRequest,
    created_at: int | None = None,
) -> dict[str, Any]:
    """A chat.completion (OpenAI shape, n=1) as a Responses ``response`` object;
    ``model`` is the alias the client asked for."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    message = message if isinstance(message, dict) else {}
    status, reason = finish_status(choice.get("finish_reason") if choice else None)
    item_status = "completed" if status == "completed" else "incomplete"
    output: list[dict[str, Any]] = []
    reasoning = _reasoning_text(message)
    if reasoning:
        output.append(reasoning_item(new_item_id("rs"), [reasoning_part(reasoning)], item_status))
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append(output_text_part(text))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append(refusal_part(refusal))
    if content:
        output.append(message_item(new_item_id("msg"), content, item_status))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        arguments = function.get("arguments")
        call_id = call.get("id")
        output.append(
            function_call_item(
                new_item_id("fc"),
                call_id if isinstance(call_id, str) and call_id else f"call_{new_id()}",
                name if isinstance(name, str) else "",
                arguments if isinstance(arguments, str) else "",
                item_status,
            )
        )
    created = completion.get("created")
    if created_at is None:
        created_at = created if type(created) is int else int(time.time())
    return response_object(
        response_id=response_id,
        model=model,
        request=request,
        created_at=created_at,
        status=status,
        output=output,
        usage=usage,
        incomplete_reason=reason,
        completed_at=int(time.time()) if status == "completed" else None,
    )


def answer_message(response: dict[str, Any]) -> dict[str, Any]:
    """A response's output as one chat assistant message (reasoning dropped: a
    chat-completions model takes none back)."""
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusals.append(part.get("refusal") or "")
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
            )
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant"}
    if refusals:
        parts = [{"type": "text", "text": text}] if text else []
        message["content"] = [*parts, {"type": "refusal", "refusal": "".join(refusals)}]
    else:
        message["content"] = text if text or not calls else None
    if calls:
        message["tool_calls"] = calls
    return message


def stored_turns(
    request: ResponsesRequest,
    response: dict[str, Any],
    previous: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The chat messages to store for a later ``previous_response_id``: the turns this
    one continued (``previous``, as given to continue_from), this request's input, and
    the answer. Instructions are not stored: they do not carry over (as at OpenAI)."""
    return [*(previous or ()), *request.messages, answer_message(response)]
