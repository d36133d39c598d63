"""Circuit breakers, one per upstream target (provider + model), per process.

Closed: requests flow; ``failure_threshold`` consecutive failures open it.
Open: requests skip the target until ``cooldown`` has passed.
Half-open: up to ``half_open_probes`` requests probe it; a success closes it, a
failure opens it again for another cooldown. Pure: the clock is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    cooldown: float = 30.0
    half_open_probes: int = 1
    failures: int = 0
    opened_at: float | None = None
    probes: int = 0

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= self.cooldown else "open"

    def allow(self, now: float) -> bool:
        """May a request go to this target now? (Counts a half-open probe.)"""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "half_open" and self.probes < self.half_open_probes:
            self.probes += 1
            return True
        return False

    def retry_after(self, now: float) -> float:
        if self.opened_at is None:
            return 0.0
        return max(self.cooldown - (now - self.opened_at), 0.0)

    def release_probe(self) -> None:
        """A half-open probe that ended without telling anything about the target."""
        if self.probes > 0:
            self.probes -= 1

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probes = 0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = now  # (re)open: a failed probe restarts the cooldown
            self.probes = 0
