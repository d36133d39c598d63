"""Circuit breaker transitions, target ordering and retry waits: pure, no sockets.

The breaker's clock is passed in, so every transition is driven by explicit times.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.breaker import CircuitBreaker
from gateway.config import RetryConfig, Route
from gateway.retryafter import retry_after_seconds
from gateway.routing import backoff_seconds, plan_targets

# ----------------------------------------------------------------------------- breaker


def opened(threshold: int = 3, cooldown: float = 10.0, probes: int = 1) -> CircuitBreaker:
    """A breaker opened at t=100 by ``threshold`` consecutive failures."""
    breaker = CircuitBreaker(
        failure_threshold=threshold, cooldown=cooldown, half_open_probes=probes
    )
    for _ in range(threshold):
        breaker.failure(100.0)
    return breaker


def test_a_new_breaker_is_closed_and_allows_everything() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10.0)
    assert breaker.state(0.0) == "closed"
    assert all(breaker.allow(float(t)) for t in range(100))
    assert breaker.retry_after(0.0) == 0.0


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10.0)
    breaker.failure(100.0)
    breaker.failure(100.5)
    assert breaker.state(100.5) == "closed"
    assert breaker.allow(100.5)
    breaker.failure(101.0)
    assert breaker.state(101.0) == "open"
    assert breaker.opened_at == 101.0


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=10.0)
    breaker.failure(1.0)
    breaker.success()
    breaker.failure(2.0)
    assert breaker.state(2.0) == "closed"  # 1, reset, 1: never 2 in a row
    breaker.failure(3.0)
    assert breaker.state(3.0) == "open"


def test_open_skips_every_request_until_the_cooldown() -> None:
    breaker = opened(cooldown=10.0)
    for now in (100.0, 101.0, 105.0, 109.99):
        assert breaker.state(now) == "open"
        assert not breaker.allow(now)
    assert breaker.probes == 0  # skipped requests are not probes


def test_retry_after_counts_down_the_cooldown() -> None:
    breaker = opened(cooldown=10.0)
    assert breaker.retry_after(100.0) == pytest.approx(10.0)
    assert breaker.retry_after(103.5) == pytest.approx(6.5)
    assert breaker.retry_after(110.0) == 0.0
    assert breaker.retry_after(250.0) == 0.0  # never negative


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_after_the_cooldown_allows_exactly_the_probes(probes: int) -> None:
    breaker = opened(cooldown=10.0, probes=probes)
    assert breaker.state(110.0) == "half_open"
    allowed = [breaker.allow(110.0 + i * 0.01) for i in range(probes + 5)]
    assert allowed == [True] * probes + [False] * 5
    assert breaker.state(111.0) == "half_open"
    assert not breaker.allow(500.0)  # probes in flight: still no more, however late


def test_a_successful_probe_closes_the_breaker() -> None:
    breaker = opened(threshold=2, cooldown=10.0)
    assert breaker.allow(110.0)
    breaker.success()
    assert breaker.state(110.0) == "closed"
    assert breaker.retry_after(110.0) == 0.0
    assert all(breaker.allow(110.0) for _ in range(10))
    # Closed again with a fresh count: it takes the full threshold to reopen.
    breaker.failure(111.0)
    assert breaker.state(111.0) == "closed"
    breaker.failure(112.0)
    assert breaker.state(112.0) == "open"


def test_a_failed_probe_reopens_and_restarts_the_cooldown() -> None:
    breaker = opened(threshold=3, cooldown=10.0, probes=1)
    assert breaker.allow(115.0)  # half-open: the probe goes out
    breaker.failure(115.0)  # ...and fails: one failure is enough, no threshold again
    assert breaker.state(115.0) == "open"
    assert breaker.opened_at == 115.0
    assert breaker.retry_after(115.0) == pytest.approx(10.0)
    # The cooldown runs from the failed probe, not from the first opening.
    assert not breaker.allow(120.0)
    assert not breaker.allow(124.99)
    assert breaker.state(125.0) == "half_open"
    assert breaker.allow(125.0)  # a new probe budget
    assert not breaker.allow(125.0)


# ----------------------------------------------------------------------------- plan_targets

A = Route(provider="a", model="m-a")
B = Route(provider="b", model="m-b")
C = Route(provider="c", model="m-c")
D = Route(provider="d", model="m-d")


def weighted(route: Route, weight: int) -> Route:
    return Route(provider=route.provider, model=route.model, weight=weight)


def test_unweighted_routes_keep_their_order() -> None:
    routes = (A, B, C, D)
    rng = random.Random(1)
    for _ in range(50):
        planned = plan_targets(routes, rng)
        assert planned == [A, B, C, D]
        assert all(p is r for p, r in zip(planned, routes, strict=True))


def test_a_single_weighted_route_does_not_reorder() -> None:
    routes = (A, weighted(B, 5), C)
    rng = random.Random(2)
    for _ in range(50):
        assert plan_targets(routes, rng) == list(routes)


def test_no_routes_plan_nothing() -> None:
    assert plan_targets((), random.Random(0)) == []


def test_weighted_routes_share_the_first_slot_by_weight() -> None:
    wa, wb = weighted(A, 1), weighted(B, 3)
    rng = random.Random(20240601)
    draws = 8000
    firsts = Counter(plan_targets((wa, wb), rng)[0].provider for _ in range(draws))
    assert set(firsts) == {"a", "b"}
    assert firsts["b"] / draws == pytest.approx(0.75, abs=0.03)
    assert firsts["a"] / draws == pytest.approx(0.25, abs=0.03)


def test_three_weights_follow_their_proportions() -> None:
    routes = (weighted(A, 1), weighted(B, 2), weighted(C, 5))
    rng = random.Random(7)
    draws = 16000
    firsts = Counter(plan_targets(routes, rng)[0].provider for _ in range(draws))
    for provider, share in (("a", 1 / 8), ("b", 2 / 8), ("c", 5 / 8)):
        assert firsts[provider] / draws == pytest.approx(share, abs=0.03)


def test_every_route_is_planned_once_and_only_weighted_ones_come_first() -> None:
    # Unweighted fallbacks listed before the weighted pair: the winner moves to the
    # front, everything else keeps its configured order.
    routes = (C, weighted(A, 1), weighted(B, 3), D)
    rng = random.Random(3)
    seen = set()
    for _ in range(500):
        planned = plan_targets(routes, rng)
        assert sorted(r.provider for r in planned) == ["a", "b", "c", "d"]
        first = planned[0]
        assert first.weight is not None
        rest = [r for r in routes if r is not first]
        assert planned[1:] == rest
        assert all(p is r for p, r in zip(planned[1:], rest, strict=True))
        seen.add(first.provider)
    assert seen == {"a", "b"}


def test_the_plan_uses_the_given_rng() -> None:
    routes = (weighted(A, 1), weighted(B, 1), weighted(C, 1))
    one = [plan_targets(routes, random.Random(99))[0] for _ in range(5)]
    two = [plan_targets(routes, random.Random(99))[0] for _ in range(5)]
    assert one == two
    rng1, rng2 = random.Random(5), random.Random(5)
    assert [plan_targets(routes, rng1) for _ in range(30)] == [
        plan_targets(routes, rng2) for _ in range(30)
    ]


# ----------------------------------------------------------------------------- backoff

RETRIES = RetryConfig(
    attempts_per_target=5, backoff_base_ms=100, backoff_max_ms=2000, retry_after_max_seconds=10
)


@pytest.mark.parametrize(
    ("attempt", "cap"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 2.0), (7, 2.0), (10, 2.0)],
)
def test_backoff_is_full_jitter_under_an_exponential_cap(attempt: int, cap: float) -> None:
    rng = random.Random(attempt)
    waits = [backoff_seconds(attempt, RETRIES, rng) for _ in range(2000)]
    assert all(w is not None and 0 <= w <= cap for w in waits)
    values = [w for w in waits if w is not None]
    # Full jitter: spread over the whole [0, cap] range, not clustered at the cap.
    assert min(values) < 0.05 * cap
    assert max(values) > 0.95 * cap
    assert sum(values) / len(values) == pytest.approx(cap / 2, rel=0.1)


def test_backoff_draws_from_the_given_rng() -> None:
    expected = random.Random(42).uniform(0, 400) / 1000
    assert backoff_seconds(3, RETRIES, random.Random(42)) == pytest.approx(expected)


def test_zero_base_means_no_wait() -> None:
    cfg = RetryConfig(backoff_base_ms=0, backoff_max_ms=2000)
    assert backoff_seconds(1, cfg, random.Random(0)) == 0.0
    assert backoff_seconds(4, cfg, random.Random(0)) == 0.0


def test_max_below_base_caps_the_first_wait_too() -> None:
    cfg = RetryConfig(backoff_base_ms=500, backoff_max_ms=50)
    rng = random.Random(0)
    assert all(0 <= (backoff_seconds(1, cfg, rng) or 0) <= 0.05 for _ in range(200))


# The upstream's Retry-After arrives as accepted seconds (gateway.retryafter reads
# the header; tests/unit/test_retryafter.py).


@pytest.mark.parametrize("seconds", [0, 1, 3, 10])
def test_a_retry_after_within_the_max_is_used(seconds: int) -> None:
    for attempt in (1, 3):
        assert backoff_seconds(attempt, RETRIES, random.Random(0), seconds) == seconds


@pytest.mark.parametrize("seconds", [11, 60])
def test_a_retry_after_above_the_max_means_do_not_retry(seconds: int) -> None:
    assert backoff_seconds(1, RETRIES, random.Random(0), seconds) is None


@pytest.mark.parametrize("header", ["soon", "", "2.5", "1s", "0x10", "-1"])
def test_an_unaccepted_retry_after_falls_back_to_backoff(header: str) -> None:
    rng = random.Random(11)
    expected = random.Random(11).uniform(0, 200) / 1000
    wait = retry_after_seconds(header, 0.0)
    assert wait is None
    assert backoff_seconds(2, RETRIES, rng, wait) == pytest.approx(expected)


def test_no_retry_after_is_plain_backoff() -> None:
    expected = random.Random(8).uniform(0, 100) / 1000
    assert backoff_seconds(1, RETRIES, random.Random(8), None) == pytest.approx(expected)
