"""Quotas: atomic counters (:mod:`stackd.quota.counter`) and the limit the gate applies
(:mod:`stackd.quota.limiter`)."""

from __future__ import annotations

from stackd.quota.counter import Counter, Period, window_of
from stackd.quota.limiter import QuotaLimiter, open_quota
from stackd.quota.sqlite import SqliteCounter

__all__ = ["Counter", "Period", "QuotaLimiter", "SqliteCounter", "open_quota", "window_of"]
