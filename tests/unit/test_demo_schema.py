"""gateway.providers.demo.schema: every value it makes validates against its schema
(checked by the jsonschema package), pydantic's and the OpenAI SDK's schemas included."""

from __future__ import annotations

import datetime
import enum
from typing import Annotated, Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from gateway.providers.demo.schema import TooLarge, schema_instance

# The formats jsonschema checks without optional packages ("time" left out: its fallback
# checker is draft 3's, which refuses RFC 3339's required offset, "00:00:00Z").
CHECK_FORMATS = jsonschema.FormatChecker(["date", "email", "ipv4", "ipv6", "uuid"])


def _valid(schema: Any, value: Any, validator: type[Any] = jsonschema.Draft202012Validator) -> None:
    validator(schema, format_checker=CHECK_FORMATS).validate(value)


SCHEMAS: dict[str, Any] = {
    "string": {"type": "string"},
    "string-lengths": {"type": "string", "minLength": 12, "maxLength": 14},
    "string-short": {"type": "string", "maxLength": 2},
    "string-formats": {
        "type": "object",
        "properties": {
            f: {"type": "string", "format": f}
            for f in ("date-time", "date", "time", "email", "uri", "uuid", "ipv4", "ipv6")
        },
        "required": ["date-time", "date", "time", "email", "uri", "uuid", "ipv4", "ipv6"],
    },
    "integer": {"type": "integer"},
    "integer-min": {"type": "integer", "minimum": 7},
    "integer-negative-range": {"type": "integer", "minimum": -9, "maximum": -3},
    "integer-exclusive": {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5},
    "integer-multiple": {"type": "integer", "minimum": 5, "multipleOf": 4},
    "number": {"type": "number"},
    "number-exclusive-tight": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "number-exclusive-low": {"type": "number", "exclusiveMinimum": 0},
    "number-exclusive-high": {"type": "number", "exclusiveMaximum": -2},
    "number-range": {"type": "number", "minimum": 1.5, "maximum": 2.5},
    "number-multiple": {"type": "number", "minimum": 1, "multipleOf": 0.5},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "enum": {"enum": ["red", "green"]},
    "enum-typed": {"type": "integer", "enum": [3, 5, 8]},
    "const": {"const": {"fixed": [1, 2]}},
    "type-list": {"type": ["null", "integer"], "minimum": 2},
    "untyped": {},
    "true": True,
    "object-required-only": {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["b"],
        "additionalProperties": False,
    },
    "object-min-properties": {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "minProperties": 3,
        "additionalProperties": {"type": "boolean"},
    },
    "object-required-additional": {
        "type": "object",
        "required": ["free"],
        "additionalProperties": {"type": "integer", "minimum": 4},
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "roles": {
                        "type": "array",
                        "items": {"enum": ["admin", "dev", "ops"]},
                        "minItems": 3,
                        "uniqueItems": True,
                    },
                    "scores": {
                        "type": "array",
                        "items": {"type": "number", "minimum": 0, "maximum": 100},
                        "minItems": 2,
                        "uniqueItems": True,
                    },
                    "names": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 4,
                        "uniqueItems": True,
                    },
                },
                "required": ["name", "roles", "scores", "names"],
            }
        },
        "required": ["user"],
    },
    "array-bounds": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    "array-empty-only": {"type": "array", "maxItems": 0},
    "prefix-items": {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "boolean"}],
        "items": False,
    },
    "any-of-nullable": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 3}]},
    "one-of": {"oneOf": [{"type": "integer", "minimum": 10}, {"type": "string"}]},
    "all-of": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer", "minimum": 1}}, "required": ["b"]},
        ]
    },
    "refs": {
        "$defs": {
            "Point": {
                "type": "object",
                "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "required": ["x", "y"],
            },
            "Alias": {"$ref": "#/$defs/Point"},
        },
        "type": "object",
        "properties": {"at": {"$ref": "#/$defs/Alias", "description": "where"}},
        "required": ["at"],
    },
    "recursive-tree": {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["label", "children", "parent"],
            }
        },
        "$ref": "#/$defs/Node",
    },
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_value_validates(name: str) -> None:
    schema = SCHEMAS[name]
    value = schema_instance(schema)
    _valid(schema, value)
    # Deterministic, and the variants of n choices validate too.
    assert schema_instance(schema) == value
    for variant in (1, 2, 7):
        _valid(schema, schema_instance(schema, variant))


def test_objects_get_their_required_properties_only() -> None:
    value = schema_instance(SCHEMAS["object-required-only"])
    assert value == {"b": 0}


def test_variants_differ_for_unique_items() -> None:
    value = schema_instance(SCHEMAS["nested"])
    user = value["user"]
    assert user["roles"] == ["admin", "dev", "ops"]
    assert len(set(user["names"])) == 4


def test_unsupported_keywords_do_not_break_generation() -> None:
    """``pattern`` and ``not`` are not honoured (documented): a value still comes."""
    assert schema_instance({"type": "string", "pattern": "^[0-9]+$"}) == "demo"
    assert schema_instance({"not": {"type": "string"}, "type": "integer"}) == 0


def test_draft4_and_draft7_forms() -> None:
    draft4 = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 0.5}
    _valid(draft4, schema_instance(draft4), jsonschema.Draft4Validator)
    tuple7 = {
        "type": "array",
        "items": [{"type": "integer"}, {"type": "string"}],
        "additionalItems": False,
        "definitions": {"Id": {"type": "string", "format": "uuid"}},
    }
    _valid(tuple7, schema_instance(tuple7), jsonschema.Draft7Validator)
    ref7 = {"definitions": {"Id": {"type": "string", "format": "uuid"}}, "$ref": "#/definitions/Id"}
    _valid(ref7, schema_instance(ref7), jsonschema.Draft7Validator)


# --------------------------------------------------------------------- pydantic models


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    postcode: Annotated[str, Field(min_length=5, max_length=8)]


class Person(BaseModel):
    name: str
    age: Annotated[int, Field(ge=18, le=120)]
    height_m: Annotated[float, Field(gt=0, lt=3)]
    member: bool
    colour: Colour
    kind: Literal["staff", "guest"]
    born: datetime.date
    address: Address
    previous: list[Address] = []
    tags: Annotated[list[str], Field(min_length=2)]
    nickname: str | None = None
    scores: dict[str, int] = {}
    friends: list[Person] = []


def test_pydantic_schema_value_validates_and_parses() -> None:
    schema = Person.model_json_schema()
    value = schema_instance(schema)
    _valid(schema, value)
    person = Person.model_validate(value)
    assert person.age >= 18
    assert len(person.tags) == 2


def test_openai_strict_schemas_validate_and_parse() -> None:
    """What the OpenAI SDK sends for ``parse(response_format=Model)`` and for
    ``pydantic_function_tool(Model)``: strict (every field required, no extras)."""
    tool = openai.pydantic_function_tool(Person)
    parameters = tool["function"]["parameters"]
    assert parameters["additionalProperties"] is False
    value = schema_instance(parameters)
    _valid(parameters, value)
    Person.model_validate(value)
    # The recursion (friends of friends) ends.
    depth, node = 0, value
    while node["friends"]:
        node, depth = node["friends"][0], depth + 1
    assert depth < 4


# --------------------------------------------------------------------- hostile schemas

SELF = {"$ref": "#/$defs/A"}
HOSTILE: dict[str, Any] = {
    "required-recursion": {
        "$defs": {"A": {"type": "object", "properties": {"a": SELF}, "required": ["a"]}},
        **SELF,
    },
    "branching-recursion": {
        "$defs": {
            "A": {
                "type": "object",
                "properties": {"a": SELF, "b": SELF, "c": SELF},
                "required": ["a", "b", "c"],
            }
        },
        **SELF,
    },
    "huge-min-items": {"type": "array", "minItems": 10**9},
    "huge-min-properties": {"type": "object", "minProperties": 10**9},
    "nested-min-items": {
        "type": "array",
        "minItems": 100,
        "items": {"type": "array", "minItems": 100, "items": {"type": "integer"}},
    },
    "huge-min-length": {"type": "string", "minLength": 10**9},
    "all-of-loop": {"$defs": {"A": {"allOf": [SELF]}}, **SELF},
    "any-of-loop": {"$defs": {"A": {"anyOf": [SELF]}}, **SELF},
    "number-overflow": {"type": "number", "minimum": 1e308, "multipleOf": 1e-308},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_schemas_raise_too_large_quickly(name: str) -> None:
    with pytest.raises(TooLarge):
        schema_instance(HOSTILE[name])


def test_a_value_just_within_the_limits_is_made() -> None:
    schema = {"type": "array", "minItems": 1000, "items": {"type": "string", "minLength": 9000}}
    value = schema_instance(schema)
    assert len(value) == 1000
    _valid(schema, value)
