"""The OpenAI Responses API surface (``POST /v1/projects/{ref}/responses``), pure.

Served by the chat-completions pipeline: the request is translated to a chat body,
the chat answer (unary, or a stream of chunks) back to Responses.

    parse_request(body)                     Responses create body -> ResponsesRequest
                                            (.chat: the chat-completions body)
    continue_from(previous, request)        the chat body after stored turns
                                            (previous_response_id)
    unary_response(completion, usage, ...)  chat.completion -> response object
    ResponsesStream(...)                    chat chunks -> Responses SSE bytes
    stored_turns(request, response)         the chat messages to store for a later turn

Nothing here does I/O. What cannot be translated, priced or bounded is refused with
ValidationFailed naming the Responses field (hosted tools, audio, background,
stored prompts and conversations, file ids, unknown fields).
"""

from __future__ import annotations

from gateway.surfaces.responses_output import (
    new_response_id,
    stored_turns,
    unary_response,
    usage_object,
)
from gateway.surfaces.responses_request import (
    HOSTED_TOOLS,
    ResponsesRequest,
    continue_from,
    parse_request,
)
from gateway.surfaces.responses_stream import ResponsesStream

__all__ = [
    "HOSTED_TOOLS",
    "ResponsesRequest",
    "ResponsesStream",
    "continue_from",
    "new_response_id",
    "parse_request",
    "stored_turns",
    "unary_response",
    "usage_object",
]
