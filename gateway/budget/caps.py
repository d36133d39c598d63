"""What a request is checked against: its amounts, the counters (with their caps) and
the rate limits it touches, encoded the way the reserve script reads them."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import gateway.budget.keys as keys
from gateway.config import DIMENSIONS, WINDOWS, Cap, Project

DIM_INDEX = {name: i for i, name in enumerate(DIMENSIONS)}


@dataclass(frozen=True, slots=True)
class Amounts:
    input_tokens: int
    output_tokens: int
    cost_nano: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def encode(self) -> str:
        return f"{self.input_tokens},{self.output_tokens},{self.total_tokens},{self.cost_nano}"

    def get(self, dimension: str) -> int:
        return (self.input_tokens, self.output_tokens, self.total_tokens, self.cost_nano)[
            DIM_INDEX[dimension]
        ]


@dataclass(frozen=True, slots=True)
class Counter:
    """One (scope, window) counter a request touches, with its caps pre-encoded."""

    scope: str  # "project" | "key" | "user" | "org"
    suffix: str  # its counter part (gateway.budget.keys): "p", "k:<key id>", "u:<digest>", "o"
    window: str
    caps: str  # "dim=limit,..." or "-"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A per-minute limit (GCRA): ``per_token`` limits cost the request's tokens."""

    suffix: str  # "rl:rpm", "rl:tpm:k:<key id>", ... (gateway.budget.keys.rate_limit_part)
    per_minute: int
    per_token: bool
    scope: str  # "project" | "key"

    @property
    def us_per_unit(self) -> float:
        """Microseconds per unit, with its fraction (whole ones distorted large limits:
        40M tokens a minute at 2 us each admitted 30M). Passed to Lua as repr(), which
        reads back the same double."""
        return 60_000_000 / self.per_minute

    def units(self, amounts: Amounts) -> int:
        return amounts.total_tokens if self.per_token else 1


def _caps_arg(caps: Sequence[Cap]) -> str:
    return ",".join(f"{DIM_INDEX[c.dimension]}={c.limit}" for c in caps) or "-"


@functools.lru_cache(maxsize=4096)
def _window_caps(caps: tuple[Cap, ...], scope: str) -> tuple[tuple[str, str], ...]:
    """(window, encoded caps) of one scope, for the windows where it has caps; the
    project scope lists every window (its usage is always tracked). Cached: the same
    few cap sets serve every request of a project."""
    out = []
    for window in WINDOWS:
        in_window = [c for c in caps if c.scope == scope and c.window == window]
        if in_window or scope == "project":
            out.append((window, _caps_arg(in_window)))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _key_counters(caps: tuple[Cap, ...], key_id: str | None) -> tuple[Counter, ...]:
    """The project's and the key's counters: the same for every request of that key,
    so built once (key ids come from the config; the cache is bounded all the same)."""
    counters = [
        Counter("project", keys.PROJECT_COUNTER, w, c) for w, c in _window_caps(caps, "project")
    ]
    if key_id is not None:
        part = keys.key_part(key_id)
        counters += (Counter("key", part, w, c) for w, c in _window_caps(caps, "key"))
    return tuple(counters)


def project_counters(project: Project, key_id: str | None, user: str | None) -> list[Counter]:
    """Counters a request touches: the project's in every window (usage is always
    tracked), the key's and the end user's only in windows where they have caps."""
    counters = list(_key_counters(project.caps, key_id))
    if user is not None:
        user_caps = _window_caps(project.caps, "user")
        if user_caps:
            part = keys.user_part(user)
            counters += (Counter("user", part, w, c) for w, c in user_caps)
    return counters


def org_counters(caps: Sequence[Cap]) -> list[Counter]:
    """An org's counters, in the windows where it has caps (none: no org step at all)."""
    return [
        Counter("org", keys.ORG_COUNTER, window, _caps_arg([c for c in caps if c.window == window]))
        for window in WINDOWS
        if any(c.window == window for c in caps)
    ]


def project_rate_limits(project: Project, key_id: str | None) -> list[RateLimit]:
    limits = project.file.rate_limits
    out: list[RateLimit] = []
    if limits.requests_per_minute:
        out.append(
            RateLimit(keys.rate_limit_part(False), limits.requests_per_minute, False, "project")
        )
    if limits.tokens_per_minute:
        out.append(RateLimit(keys.rate_limit_part(True), limits.tokens_per_minute, True, "project"))
    if key_id is not None:
        per_key = limits.per_key
        if per_key.requests_per_minute:
            part = keys.rate_limit_part(False, key_id)
            out.append(RateLimit(part, per_key.requests_per_minute, False, "key"))
        if per_key.tokens_per_minute:
            part = keys.rate_limit_part(True, key_id)
            out.append(RateLimit(part, per_key.tokens_per_minute, True, "key"))
    return out
