"""Budgets in Redis: reserve a request's worst case before forwarding, settle the truth.

keys      the Redis key layout (tags, counter parts, window ids): the only module
          that names keys; the Lua scripts in lua/ mirror it
caps      what a request is checked against: Amounts, Counter, RateLimit
refusal   why a reservation was refused (data; gateway.errors renders the 402)
scripts   the Lua scripts, read from the package
store     BudgetStore: reserve, settle, extend, drain against Redis
"""

from gateway.budget.caps import (
    Amounts,
    Counter,
    RateLimit,
    org_counters,
    project_counters,
    project_rate_limits,
)
from gateway.budget.keys import resets_at
from gateway.budget.refusal import BudgetExceeded, RateLimitExceeded, Refusal, fitting_output
from gateway.budget.store import BudgetStore, RedisLike, Reservation, StoreUnavailable

__all__ = [
    "Amounts",
    "BudgetExceeded",
    "BudgetStore",
    "Counter",
    "RateLimit",
    "RateLimitExceeded",
    "RedisLike",
    "Refusal",
    "Reservation",
    "StoreUnavailable",
    "fitting_output",
    "org_counters",
    "project_counters",
    "project_rate_limits",
    "resets_at",
]
