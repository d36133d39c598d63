"""Choosing upstream targets, pure: the order to try an alias's routes, and the
wait before a retry (exponential backoff with full jitter, or the upstream's
Retry-After when it is short enough)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.config import RetryConfig, Route


def plan_targets(routes: Sequence[Route], rng: random.Random) -> list[Route]:
    """Weighted routes compete for the first slot (by weight); every other route
    follows as a fallback in the configured order."""
    weighted = [r for r in routes if r.weight]
    if len(weighted) < 2:
        return list(routes)
    first = rng.choices(weighted, weights=[r.weight or 0 for r in weighted])[0]
    return [first] + [r for r in routes if r is not first]


def backoff_seconds(
    attempt: int, retries: RetryConfig, rng: random.Random, retry_after: int | None = None
) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1-based); None: do not retry
    this target (its Retry-After is longer than we are willing to hold the client).
    ``retry_after``: the upstream's, as accepted seconds (gateway.retryafter), or None."""
    if retry_after is not None:
        return retry_after if 0 <= retry_after <= retries.retry_after_max_seconds else None
    cap = min(retries.backoff_max_ms, retries.backoff_base_ms * 2 ** (attempt - 1))
    return rng.uniform(0, cap) / 1000
