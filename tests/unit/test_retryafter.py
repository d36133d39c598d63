"""Reading an upstream's Retry-After (pure)."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from gateway.retryafter import RETRY_AFTER_CAP_SECONDS, retry_after_seconds

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0),
        ("7", 7),
        (" 7 ", 7),
        ("60", 60),
        ("61", RETRY_AFTER_CAP_SECONDS),
        ("9999999999", RETRY_AFTER_CAP_SECONDS),
        (formatdate(NOW + 12, usegmt=True), 12),
        (formatdate(NOW + 11.5, usegmt=True), 11),  # the date has whole seconds
        (formatdate(NOW - 100, usegmt=True), 0),
        (formatdate(NOW + 10**7, usegmt=True), RETRY_AFTER_CAP_SECONDS),
    ],
)
def test_accepted_forms(value: str, seconds: int) -> None:
    assert retry_after_seconds(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "1.5",
        "-1",
        "+3",
        "1e3",
        "nan",
        "inf",
        "0x10",
        "\u0663",  # a non-ASCII digit, which int() would read
        "3, 4",
        "9" * 11,
        "1; sk-secret",
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850: obsolete, not accepted
        "Sun Nov  6 08:49:37 1994",  # asctime: obsolete, not accepted
        "Sun, 06 Nov 1994 08:49:37 GMT sk-secret",
        "Sun, 31 Feb 2024 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
    ],
)
def test_anything_else_is_dropped(value: str | None) -> None:
    assert retry_after_seconds(value, NOW) is None
