"""Requests in flight per API key and per org, in this process: what lets one tenant
hold at most a bounded share of the process (memory, sockets, upstream slots)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InFlight:
    """Counters of open requests; an entry is dropped when it reaches zero, so the maps
    hold only tenants with something in flight."""

    by_key: dict[str, int] = field(default_factory=dict)
    by_org: dict[str, int] = field(default_factory=dict)

    def enter(self, key: str, org: str, max_key: int, max_org: int) -> str | None:
        """Take a slot for ``key`` of ``org``; None if taken, else which cap is full
        ("key" or "org") and nothing is taken."""
        if self.by_key.get(key, 0) >= max_key:
            return "key"
        if self.by_org.get(org, 0) >= max_org:
            return "org"
        self.by_key[key] = self.by_key.get(key, 0) + 1
        self.by_org[org] = self.by_org.get(org, 0) + 1
        return None

    def leave(self, key: str, org: str) -> None:
        for counts, name in ((self.by_key, key), (self.by_org, org)):
            left = counts.get(name, 0) - 1
            if left > 0:
                counts[name] = left
            else:
                counts.pop(name, None)
