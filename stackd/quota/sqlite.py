"""Quota counters in SQLite (WAL, on :class:`stackd.db.SqliteDb`): one ``INSERT ... ON CONFLICT
DO UPDATE ... RETURNING`` per hit, so the increment is one atomic statement even across
processes sharing the file. No file lock (unlike the metadata store): several servers share a
quota store. One host, so the window comes from the local clock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from stackd.db.sqlite import SqliteDb
from stackd.errors import UpstreamUnavailable
from stackd.quota.counter import SWEEP_EVERY, Period, window_of

__all__ = ["SqliteCounter"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_counters (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
)
"""
_HIT = """
INSERT INTO quota_counters (key, count, expires_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET count = count + excluded.count
RETURNING count
"""
_SWEEP = "DELETE FROM quota_counters WHERE expires_at <= ?"
_MIN_VERSION = (3, 35, 0)  # RETURNING


class SqliteCounter:
    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        self._next_sweep = 0.0
        self._pinging: asyncio.Future[Any] | None = None

    def __repr__(self) -> str:
        return f"SqliteCounter({str(self._db.path)!r})"

    @classmethod
    async def open(cls, path: Path) -> SqliteCounter:
        if sqlite3.sqlite_version_info < _MIN_VERSION:
            raise UpstreamUnavailable(
                f"the SQLite quota store needs SQLite 3.35 or newer (for RETURNING); this Python has "
                f"{sqlite3.sqlite_version}")
        return cls(await SqliteDb.open(path, [_SCHEMA], label="the quota store", shared=True,
                                       setting="server.quota.kvstore.db_path"))

    async def hit(self, key: str, period: Period, n: int = 1) -> tuple[int, float]:
        now = time.time()
        start, end = window_of(period, now)
        async with self._db.use("cannot count this request") as db:
            # One trip to aiosqlite's thread (execute, fetch and close would be three).
            rows = await db.execute_fetchall(_HIT, (f"{key}@{start}", n, end))
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_EVERY
                await db.execute(_SWEEP, (int(now),))
        (row,) = rows  # RETURNING gives one row
        return int(row[0]), float(end)

    async def ping(self) -> None:
        """Take the write lock and give it back, counting nothing: what a hit needs (in WAL mode
        a read would pass while another process holds the lock). One script, so no hit of this
        connection can run inside the empty transaction."""
        if self._pinging is not None:
            # The last ping still waits on the lock (a probe gave up on it): no second one queued
            # behind it, so probes of a locked store cannot pile up in the connection's thread.
            raise self._db.failed(TimeoutError("still locked"), "cannot be written")
        async with self._db.use("cannot be written") as db:
            job = asyncio.ensure_future(db.executescript("BEGIN IMMEDIATE; ROLLBACK;"))
            self._pinging = job
            job.add_done_callback(self._pinged)
            await asyncio.shield(job)

    def _pinged(self, job: asyncio.Future[Any]) -> None:
        self._pinging = None
        if not job.cancelled():
            job.exception()  # seen: a ping its prober gave up on may fail unawaited

    async def close(self) -> None:
        await self._db.close()
