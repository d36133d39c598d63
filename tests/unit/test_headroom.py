"""Unit tests for gateway.pipeline.headroom (pure)."""

from __future__ import annotations

from gateway.budget import RateLimit
from gateway.budget.store import CapRoom, Room, parse_room
from gateway.pipeline.headroom import budget_headers

RPM = RateLimit("rl:rpm", 600, False, "project")
RPM_KEY = RateLimit("rl:rpm:k:main", 300, False, "key")
TPM = RateLimit("rl:tpm", 40_000, True, "project")


def test_the_tightest_caps_of_every_hold_and_their_resets() -> None:
    project = Room(
        CapRoom(900, 1000, "d20261207"), CapRoom(5_000_000, 2_000_000_000, "m202612"), ()
    )
    org = Room(CapRoom(400, 500, "m202612"), None, ())
    headers = budget_headers([project, org], [])
    assert headers == {
        "X-Budget-Remaining-Tokens": "400",
        "X-Budget-Limit-Tokens": "500",
        "X-Budget-Reset-Tokens": "2027-01-01T00:00:00Z",
        "X-Budget-Remaining-USD": "0.005000",
        "X-Budget-Limit-USD": "2.000000",
        "X-Budget-Reset-USD": "2027-01-01T00:00:00Z",
    }


def test_a_lifetime_cap_has_no_reset_and_no_cap_no_header() -> None:
    headers = budget_headers([Room(CapRoom(7, 10, "all"), None, ())], [])
    assert headers == {"X-Budget-Remaining-Tokens": "7", "X-Budget-Limit-Tokens": "10"}
    assert budget_headers([Room(None, None, ())], []) == {}


def test_rate_limits_the_tightest_of_each_kind_in_openai_style() -> None:
    room = Room(None, None, ((590, 1000), (12, 48_000), (39_000, 1_500)))
    headers = budget_headers([room], [RPM, RPM_KEY, TPM])
    assert headers == {
        "x-ratelimit-limit-requests": "300",
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-reset-requests": "48s",
        "x-ratelimit-limit-tokens": "40000",
        "x-ratelimit-remaining-tokens": "39000",
        "x-ratelimit-reset-tokens": "2s",
    }


def test_parse_room_reads_the_scripts_fields() -> None:
    room = parse_room(b"5 10 d20261207|- ", b"3 250;7 61000")
    assert room.tokens == CapRoom(5, 10, "d20261207")
    assert room.cost is None
    assert room.rates == ((3, 250), (7, 61_000))
    assert budget_headers([room], [RPM, TPM])["x-ratelimit-reset-tokens"] == "1m1s"
    assert budget_headers([room], [RPM, TPM])["x-ratelimit-reset-requests"] == "250ms"
