"""A value that validates against a JSON schema, pure and deterministic (demo provider).

Covers what structured outputs and tool parameters use: objects (required properties,
``minProperties``), arrays (``items``, ``prefixItems``, ``minItems``/``maxItems``),
strings (``minLength``/``maxLength``, common formats), numbers and integers (bounds,
exclusive bounds, ``multipleOf``), booleans, null, ``enum``, ``const``, ``anyOf``/
``oneOf`` (the first usable option), ``allOf`` (merged) and local ``$ref`` (``$defs``,
``definitions``), as pydantic and the OpenAI SDK emit them. Not honoured: ``pattern``,
``not``, ``if``/``then``/``else``, ``contains``, ``dependentRequired``.

``variant`` makes sibling values differ (array items, the choices of ``n``), so that
``uniqueItems`` holds for strings, numbers and enums of enough values.

The schema comes from a client: a value past a few thousand nodes, a string past
``_MAX_STRING`` characters, a required structure without end, or ``allOf`` nested
past reason raise TooLarge instead of exhausting the process.
"""

from __future__ import annotations

import math
from typing import Any

# Past this depth optional structure stops (empty arrays, null options): a recursive
# schema (a tree of nodes) still ends.
_DEEP = 4
# Past this depth, a schema's required structure has no end: no finite value.
_GIVE_UP = 40
_MAX_VALUES = 2_000  # JSON values (nodes) in one generated value
_MAX_STRING = 10_000  # characters of one generated string (minLength)
_MAX_NESTING = 32  # allOf within allOf (through references)
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}
_NUMBER_TYPES = ("number", "integer")


class TooLarge(ValueError):
    """The schema has no value within the generator's limits."""


def schema_instance(schema: Any, variant: int = 0) -> Any:
    """A value valid against ``schema`` (a JSON schema dict, or True/False); TooLarge
    when none is within the limits."""
    return _Generator(schema).value(schema, variant, 0)


class _Generator:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.left = _MAX_VALUES

    def value(self, schema: Any, variant: int, depth: int) -> Any:
        self.left -= 1
        if self.left < 0 or depth > _GIVE_UP:
            raise TooLarge("the schema has no value of a size the demo makes")
        if schema is False:
            return None  # nothing validates: there is no right answer
        schema = self.flatten(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[variant % len(enum)]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                chosen = _merge(rest, self.flatten(self.pick(options, depth)))
                return self.value(chosen, variant, depth + 1)
        kind = _type(schema)
        if kind == "object":
            return self.object(schema, variant, depth)
        if kind == "array":
            return self.array(schema, variant, depth)
        if kind in _NUMBER_TYPES:
            try:
                return _number(schema, variant, integer=kind == "integer")
            except (OverflowError, ValueError):  # bounds or steps past float range
                raise TooLarge("numbers out of range") from None
        if kind == "boolean":
            return variant % 2 == 0
        if kind == "null":
            return None
        return _string(schema, variant)

    def flatten(self, schema: Any, nesting: int = 0) -> dict[str, Any]:
        """The schema with local ``$ref`` resolved and ``allOf`` merged into it."""
        if nesting > _MAX_NESTING:
            raise TooLarge("allOf nested too deep")
        if not isinstance(schema, dict):
            return {}
        for _ in range(32):  # a chain of references, not a loop of them
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                break
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self.resolve(ref), **rest}
        parts = schema.get("allOf")
        if isinstance(parts, list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                merged = _merge(merged, self.flatten(part, nesting + 1))
            schema = merged
        return dict(schema)

    def resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            return {}  # remote references: nothing to follow offline
        node: Any = self.root
        for token in ref[1:].split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            node = node.get(token) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def pick(self, options: list[Any], depth: int) -> Any:
        """The first option that is not null; deep down, null when there is one (ends
        recursion through optional fields)."""
        nulls = [o for o in options if _type(self.flatten(o)) == "null"]
        others = [o for o in options if o not in nulls]
        if depth >= _DEEP and nulls:
            return nulls[0]
        return (others or options)[0]

    def object(self, schema: dict[str, Any], variant: int, depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        extra = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for name in schema.get("required") or ():
            sub = properties.get(name, extra if isinstance(extra, dict) else True)
            out[name] = self.value(sub, variant, depth + 1)
        wanted = schema.get("minProperties")
        if isinstance(wanted, int):
            for name, sub in properties.items():
                if len(out) >= wanted:
                    break
                out.setdefault(name, self.value(sub, variant, depth + 1))
            while len(out) < wanted and extra is not False:
                out[f"extra_{len(out) + 1}"] = self.value(extra, variant, depth + 1)
        return out

    def array(self, schema: dict[str, Any], variant: int, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 4-7 tuples
            prefix, items = items, schema.get("additionalItems", True)
        prefix = prefix if isinstance(prefix, list) else []
        low = schema.get("minItems")
        low = low if isinstance(low, int) else 0
        count = max(low, len(prefix) or (1 if depth < _DEEP else 0))
        high = schema.get("maxItems")
        if isinstance(high, int):
            count = min(count, high)
        if items is False:
            count = min(count, len(prefix))
        return [
            self.value(prefix[i] if i < len(prefix) else items, variant + i, depth + 1)
            for i in range(count)
        ]


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        usable = [k for k in kind if k != "null"]
        kind = usable[0] if usable else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
        return "number"
    return "string"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``allOf`` of two schemas as one: properties and required lists combine."""
    out = {**a, **b}
    if isinstance(a.get("properties"), dict) and isinstance(b.get("properties"), dict):
        out["properties"] = {**a["properties"], **b["properties"]}
    if isinstance(a.get("required"), list) and isinstance(b.get("required"), list):
        out["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return out


def _string(schema: dict[str, Any], variant: int) -> str:
    fmt = schema.get("format")
    if fmt in _FORMATS:
        return _FORMATS[fmt]
    if fmt == "email":
        return f"demo{variant or ''}@example.com"
    if fmt in ("uri", "url", "iri"):
        return f"https://example.com/demo{variant or ''}"
    if fmt == "uuid":
        return f"00000000-0000-4000-8000-{variant:012d}"
    text = "demo" if variant == 0 else f"demo-{variant + 1}"
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and low > _MAX_STRING:
        raise TooLarge(f"minLength over {_MAX_STRING}")
    if isinstance(low, int) and len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int):
        text = text[:high]
    return text


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low exclusive, high, high exclusive), drafts 4 and 6+ alike."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low_ex = high_ex = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:  # draft 4: a flag on minimum
        low_ex = low is not None
    elif _is_number(ex_low) and (low is None or ex_low >= low):
        low, low_ex = ex_low, True
    if ex_high is True:
        high_ex = high is not None
    elif _is_number(ex_high) and (high is None or ex_high <= high):
        high, high_ex = ex_high, True
    return (low if _is_number(low) else None, low_ex, high if _is_number(high) else None, high_ex)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(schema: dict[str, Any], variant: int, integer: bool) -> int | float:
    low, low_ex, high, high_ex = _bounds(schema)
    if integer:  # exclusive bounds become the nearest integers inside them
        if low is not None:
            low = math.floor(low) + 1 if low_ex else math.ceil(low)
        if high is not None:
            high = math.ceil(high) - 1 if high_ex else math.floor(high)
    else:  # a point strictly inside an exclusive bound (1 past it where there is room)
        if low is not None and low_ex:
            low = low + 1 if high is None or low + 1 < high else (low + high) / 2
        if high is not None and high_ex:
            high = high - 1 if low is None or high - 1 >= low else (low + high) / 2
    value: float = variant if low is None or low <= 0 else low + variant
    if high is not None and value > high:
        value = high
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
        value = math.ceil(value / step) * step
        if high is not None and value > high:
            value = math.floor(high / step) * step
    return int(value) if integer else float(value)
