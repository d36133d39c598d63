"""Instants for the tests that move the store's clock (``now_ms``) instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime


def ms(iso: str) -> int:
    """A UTC ISO timestamp (milliseconds allowed) as epoch milliseconds."""
    return round(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


T_JUNE = ms("2026-06-15T12:00:00")  # an ordinary day: mid-month, mid-day
