"""gateway.jsonlimits: element counts and depth from the bytes, pure."""

from __future__ import annotations

import orjson
import pytest

from gateway.jsonlimits import NotJson, TooDeep, TooManyElements, element_count, load_bounded


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (0, 1),
        ([], 2),  # an empty container counts one
        ([1, 2, 3], 4),
        ({"a": 1, "b": [1, 2]}, 5),  # the object, 2 members, 2 array values
        ({"t": 'a,b[{c}]\\",x'}, 2),  # punctuation and escapes inside a string
        ([{"k": ["v", {}]}] * 3, 1 + 3 * 3 + 2 + 3 + 1),  # brackets, commas in and between, top
    ],
)
def test_element_count_skips_string_contents(value: object, count: int) -> None:
    assert element_count(orjson.dumps(value)) == count


def test_load_bounded_refuses_over_the_limits_and_keeps_what_fits() -> None:
    assert load_bounded(orjson.dumps([0] * 9), 10, 4) == [0] * 9
    with pytest.raises(TooManyElements):
        load_bounded(orjson.dumps([0] * 10), 10, 4)
    text = orjson.dumps({"t": ",".join(["[{}]"] * 1000)})  # many commas, 2 elements
    assert load_bounded(text, 10, 4) == orjson.loads(text)
    assert load_bounded(b"[[[[1]]]]", 100, 4) == [[[[1]]]]
    with pytest.raises(TooDeep):
        load_bounded(b"[[[[[1]]]]]", 100, 4)
    with pytest.raises(TooDeep):
        load_bounded(b'{"a":{"b":{"c":{"d":{}}}}}', 100, 4)
    with pytest.raises(NotJson):
        load_bounded(b"[" * 2000 + b"]" * 2000, 10_000, 200)
    with pytest.raises(NotJson):
        load_bounded(b"{nope", 100, 4)
