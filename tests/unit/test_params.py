"""Unit tests for gateway.params: which body fields may go upstream (pure)."""

from __future__ import annotations

import pytest

from gateway.errors import ValidationFailed
from gateway.params import (
    OUTPUT_LENGTH,
    UNDERSTOOD,
    extra_param_problem,
    forwarded_extras,
    refuse_unknown,
)


def test_understood_fields_pass() -> None:
    refuse_unknown(dict.fromkeys(UNDERSTOOD, 1), frozenset())


def test_an_unknown_field_is_refused_naming_it_first_in_order() -> None:
    with pytest.raises(ValidationFailed) as info:
        refuse_unknown({"messages": [], "zeta": 1, "alpha": 2}, frozenset())
    assert info.value.body["param"] == "alpha"
    assert "'alpha', 'zeta'" in info.value.body["message"]


def test_an_allowed_extra_passes_and_the_others_are_still_refused() -> None:
    refuse_unknown({"top_k": 5}, frozenset({"top_k"}))
    with pytest.raises(ValidationFailed) as info:
        refuse_unknown({"top_k": 5, "n_predict": 9}, frozenset({"top_k"}))
    assert info.value.body["param"] == "n_predict"
    assert "answer's length" in info.value.body["message"]


def test_understood_and_length_fields_are_disjoint() -> None:
    assert not UNDERSTOOD & OUTPUT_LENGTH


@pytest.mark.parametrize(
    ("name", "kind", "problem"),
    [
        ("top_k", "openai", None),
        ("top_k", "anthropic", None),
        ("system", "openai", None),
        ("system", "anthropic", "Messages body"),
        ("n_predict", "openai", "length"),
        ("temperature", "openai", "already understands"),
    ],
)
def test_extra_param_problem(name: str, kind: str, problem: str | None) -> None:
    found = extra_param_problem(name, kind)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_forwarded_extras_takes_only_present_allowed_fields() -> None:
    body = {"top_k": 5, "min_p": 0.1, "other": 1}
    assert forwarded_extras(body, frozenset({"top_k", "typical_p"})) == {"top_k": 5}
