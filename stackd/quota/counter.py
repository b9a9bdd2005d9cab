"""The counter interface: one atomic hit per request, separate from the key-value store.

A counter is never read and then written: a read-then-write lets N concurrent requests count
as fewer than N (Llama Stack 0.2.12 counted 100 concurrent requests as 1).
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["Counter", "Period", "PERIOD_SECONDS", "SWEEP_EVERY", "window_of"]

Period = Literal["day", "hour", "minute"]

PERIOD_SECONDS: dict[str, int] = {"day": 86400, "hour": 3600, "minute": 60}

# Expired windows are deleted at most this often (seconds) where the store does not expire keys
# itself (SQLite, PostgreSQL); a window holds a few rows per client.
SWEEP_EVERY = 60.0


def window_of(period: Period, now: float) -> tuple[int, int]:
    """``(start, end)`` in Unix seconds of the fixed UTC window holding ``now``. Unix time has
    no leap seconds, so multiples of 86400 are UTC midnights."""
    size = PERIOD_SECONDS[period]
    start = int(now // size) * size
    return start, start + size


class Counter(Protocol):
    async def hit(self, key: str, period: Period, n: int = 1) -> tuple[int, float]:
        """Count ``n`` hits of ``key`` in the current window of ``period``, atomically; return the
        new count and when the window resets (Unix seconds). Raise UpstreamUnavailable (503,
        naming the store) when the store fails."""
        ...

    async def ping(self) -> None:
        """Reach the store without counting anything (readiness); raise UpstreamUnavailable."""
        ...

    async def close(self) -> None: ...
