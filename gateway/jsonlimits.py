"""What one JSON body may cost to decode: element count and nesting depth, checked on
the bytes before anything is built where possible. Pure: takes bytes.

A 1 MiB body of ``[{},{},...]`` is 350,000 objects, ~50 MB once decoded, and a walk
over it stalls the event loop for every other tenant. Counting costs a few passes of
``bytes.count`` (C speed, ~1 ms per MiB); only a body whose cheap count is over the
limit gets the exact one (strings skipped), and only a body within the limits is
decoded.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class TooManyElements(Exception):
    """More JSON elements (values, object members) than allowed."""


class TooDeep(Exception):
    """Nested deeper than allowed."""


class NotJson(Exception):
    """Not valid JSON."""


def _structural(raw: bytes) -> tuple[int, int]:
    """(commas + opening brackets + 1, the number of opening brackets). The first is
    the element count: every array value and object member but the first of its
    container follows a comma, the first follows its bracket, plus the top-level
    value (an empty container counts one, as it costs one). Counted on raw bytes it
    is an upper bound: a string holding those characters adds to it."""
    opens = raw.count(b"[") + raw.count(b"{")
    return raw.count(b",") + opens + 1, opens


def element_count(raw: bytes) -> int:
    """The element count of a JSON text (see ``_structural``), strings' contents not
    counted."""
    return _structural(_STRING.sub(b"", raw))[0]


def _depth_over(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False


def load_bounded(raw: bytes, max_elements: int, max_depth: int) -> Any:
    """Decode ``raw`` if it has at most ``max_elements`` elements nested at most
    ``max_depth`` deep (containers: ``{"a": [1]}`` is 2 deep); else raise TooManyElements
    or TooDeep, before decoding whenever the bytes tell. NotJson: not valid JSON."""
    upper, opens = _structural(raw)
    if upper > max_elements and element_count(raw) > max_elements:
        raise TooManyElements
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses beyond 1,024 levels: too deep, whatever the limit says.
        raise NotJson from None
    if opens > max_depth and _depth_over(value, max_depth):
        raise TooDeep
    return value
