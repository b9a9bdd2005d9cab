"""Quota counters in SQLite (aiosqlite, WAL): one ``INSERT ... ON CONFLICT DO UPDATE ...
RETURNING`` per hit, so the increment is one atomic statement even across processes sharing
the file. No file lock (unlike the metadata store): several servers share a quota store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite

from stackd.errors import UpstreamUnavailable
from stackd.kvstore.sqlite import store_failed
from stackd.quota.counter import Period, window_of

__all__ = ["SqliteCounter"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_counters (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
)
"""
_HIT = """
INSERT INTO quota_counters (key, count, expires_at) VALUES (?, 1, ?)
ON CONFLICT (key) DO UPDATE SET count = count + 1
RETURNING count
"""
_SWEEP = "DELETE FROM quota_counters WHERE expires_at <= ?"
# Expired windows are deleted at most this often (seconds); a window's rows are a few per client.
_SWEEP_EVERY = 60.0
_MIN_VERSION = (3, 35, 0)  # RETURNING


def _prepare(path: Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class SqliteCounter:
    def __init__(self, path: Path) -> None:
        self._path = Path(path).expanduser()
        self._db: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()
        self._next_sweep = 0.0
        self._pinging: asyncio.Future[Any] | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteCounter:
        if sqlite3.sqlite_version_info < _MIN_VERSION:
            raise UpstreamUnavailable(
                f"the SQLite quota store needs SQLite 3.35 or newer (for RETURNING); this Python has "
                f"{sqlite3.sqlite_version}")
        counter = cls(path)
        await counter._connect()
        return counter

    async def _connect(self) -> aiosqlite.Connection:
        async with self._opening:
            if self._db is not None:
                return self._db
            try:
                path = await asyncio.to_thread(_prepare, self._path)
            except OSError as exc:
                raise store_failed(self._path, exc, "cannot be created") from exc
            try:
                db = await aiosqlite.connect(path, isolation_level=None)
            except sqlite3.Error as exc:
                raise store_failed(self._path, exc, "cannot be opened") from exc
            try:
                await db.execute("PRAGMA journal_mode=WAL")
                # NORMAL: a commit in WAL mode does not wait for fsync; a crash may lose the
                # last hits, never corrupt the file.
                await db.execute("PRAGMA synchronous=NORMAL")
                await db.execute("PRAGMA busy_timeout=5000")
                await db.execute(_SCHEMA)
            except BaseException as exc:
                await db.close()  # aiosqlite's thread would keep the process alive
                if isinstance(exc, sqlite3.Error):
                    raise store_failed(self._path, exc, "cannot be prepared") from exc
                raise
            self._db = db
            return db

    async def hit(self, key: str, period: Period) -> tuple[int, float]:
        now = time.time()
        start, end = window_of(period, now)
        db = self._db or await self._connect()
        try:
            async with db.execute(_HIT, (f"{key}@{start}", end)) as cursor:
                row = await cursor.fetchone()
            if now >= self._next_sweep:
                self._next_sweep = now + _SWEEP_EVERY
                await db.execute(_SWEEP, (int(now),))
        except sqlite3.Error as exc:
            if not _transient(exc):
                # A broken connection (file gone, disk error) is reopened by the next hit, so
                # counting resumes without a restart once the store is back.
                self._db = None
                await _close_quietly(db)
            # Not store_failed's advice: this file is shared on purpose, and the request is refused.
            raise UpstreamUnavailable(f"the quota store {str(self._path)!r} cannot count this request: {exc}; "
                                      "requests are refused until it is usable again") from exc
        assert row is not None, "RETURNING gives one row"
        return int(row[0]), float(end)

    async def ping(self) -> None:
        """Take the write lock and give it back, counting nothing: what a hit needs (in WAL mode
        a read would pass while another process holds the lock). One script, so no hit of this
        connection can run inside the empty transaction."""
        if self._pinging is not None:
            # The last ping still waits on the lock (a probe gave up on it): no second one queued
            # behind it, so probes of a locked store cannot pile up in the connection's thread.
            raise UpstreamUnavailable(f"the quota store {str(self._path)!r} is still locked")
        db = self._db or await self._connect()
        job = asyncio.ensure_future(db.executescript("BEGIN IMMEDIATE; ROLLBACK;"))
        self._pinging = job
        job.add_done_callback(self._pinged)
        try:
            await asyncio.shield(job)
        except sqlite3.Error as exc:
            if not _transient(exc):
                self._db = None
                await _close_quietly(db)
            raise UpstreamUnavailable(f"the quota store {str(self._path)!r} cannot be written: {exc}") from exc

    def _pinged(self, job: asyncio.Future[Any]) -> None:
        self._pinging = None
        if not job.cancelled():
            job.exception()  # seen: a ping its prober gave up on may fail unawaited

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()


def _transient(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


async def _close_quietly(db: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await db.close()
