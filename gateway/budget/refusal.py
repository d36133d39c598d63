"""Why a reservation was refused, as data: the cap without room (402) or the rate limit
(429), and the largest max_tokens that would fit. The 402 body is rendered by
``gateway.errors.BudgetExhausted``."""

from __future__ import annotations

from dataclasses import dataclass

import gateway.budget.keys as keys
from gateway.budget.caps import RateLimit

_SCOPE_WORD = {"project": "", "key": "per-key ", "user": "per-user ", "org": "org "}
_WINDOW_WORD = {"day": "daily", "month": "monthly", "lifetime": "lifetime"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: the first counter without room."""

    scope: str  # "project" | "key" | "user" | "org"
    window: str
    dimension: str
    limit: int
    used: int
    reserved: int
    requested: int
    window_id: str

    @property
    def room(self) -> int:
        """What the cap has left: neither used nor held by requests in flight."""
        return max(self.limit - self.used - self.reserved, 0)

    @property
    def reached(self) -> bool:
        """Whether the cap is full already (else only this request would cross it)."""
        return self.used + self.reserved >= self.limit

    @property
    def reason(self) -> str:
        """The refusal in one line: "per-key daily total_tokens cap reached"."""
        verb = "reached" if self.reached else "would be exceeded by this request"
        return f"{_SCOPE_WORD[self.scope]}{_WINDOW_WORD[self.window]} {self.dimension} cap {verb}"

    @property
    def resets_at(self) -> str | None:
        """When the refused window ends (ISO 8601, UTC); None: a lifetime cap."""
        return keys.resets_at(self.window_id)


def fitting_output(refusal: Refusal, output_ceiling: int, output_price: int | None) -> int | None:
    """The largest max_tokens with which the refused request fits now (None: none does).

    Lowering max_tokens by one lowers the worst case by one token on the output and
    total dimensions, and by the output price on cost; input caps are not helped by it.
    ``output_price``: nano-USD per million output tokens."""
    over = refusal.requested - refusal.room
    if refusal.dimension in ("output_tokens", "total_tokens"):
        cut = over
    elif refusal.dimension == "cost_usd" and output_price:
        cut = -(-over * 1_000_000 // output_price)
    else:
        return None
    fits = output_ceiling - cut
    return fits if fits >= 1 else None


class BudgetExceeded(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class RateLimitExceeded(Exception):
    """No room in a rate limit: retry after ``retry_after_ms``; None when the request
    alone (``requested`` units) exceeds the per-minute limit, so waiting cannot help."""

    def __init__(self, limit: RateLimit, retry_after_ms: int | None, requested: int) -> None:
        super().__init__(f"{limit.suffix} rate limit")
        self.limit = limit
        self.retry_after_ms = retry_after_ms
        self.requested = requested
