"""SQLite kvstore through aiosqlite (its own thread, so the event loop never blocks on disk)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from stackd.errors import UpstreamUnavailable

__all__ = ["SqliteKVStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kvstore (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL
)
"""


def _prepare(path: Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _advice(exc: BaseException) -> str:
    text = str(exc).lower()
    if "full" in text or getattr(exc, "errno", None) == 28:
        return "free space on its disk"
    if "locked" in text or "busy" in text:
        return "another process holds the file locked; stop it or give this server its own db_path"
    if "readonly" in text or "read-only" in text or "permission" in text:
        return "make the file and its directory writable, or point db_path (or STACKD_HOME) elsewhere"
    if "not a database" in text or "malformed" in text:
        return "the file is not an intact SQLite database: move it away, or point db_path elsewhere"
    return "check the disk and the file, or point db_path (or STACKD_HOME) elsewhere"


def store_failed(path: Path, exc: BaseException, doing: str = "cannot be used") -> UpstreamUnavailable:
    """503 naming the file: the store, not the request, is at fault, and a retry may succeed."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UpstreamUnavailable(f"the SQLite store {str(path)!r} {doing}: {reason}; {_advice(exc)}")


class SqliteKVStore:
    def __init__(self, db: aiosqlite.Connection, namespace: str, path: Path) -> None:
        self._db = db
        self._ns = f"{namespace}:" if namespace else ""
        self._path = path

    @classmethod
    async def open(cls, path: Path, namespace: str = "") -> SqliteKVStore:
        try:
            path = await asyncio.to_thread(_prepare, path)
        except OSError as exc:
            raise store_failed(path, exc, "cannot be created") from exc
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise store_failed(path, exc, "cannot be opened") from exc
        try:
            # WAL lets readers and the one writer overlap; the busy timeout makes a writer wait, not fail.
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute(_SCHEMA)
        except BaseException as exc:
            # aiosqlite's thread is not a daemon: left open, it keeps the process alive after a
            # failed start (and the process then ignores SIGTERM while it waits at exit).
            await db.close()
            if isinstance(exc, sqlite3.Error):
                raise store_failed(path, exc, "cannot be prepared") from exc
            raise
        return cls(db, namespace, path)

    def __repr__(self) -> str:
        return f"SqliteKVStore({str(self._path)!r}, namespace={self._ns!r})"

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except sqlite3.ProgrammingError:
            raise  # a bug of ours, not a state of the disk
        except sqlite3.Error as exc:
            raise store_failed(self._path, exc) from exc

    async def get(self, key: str) -> str | None:
        async def call() -> str | None:
            async with self._db.execute(
                "SELECT value FROM kvstore WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (self._ns + key, time.time()),
            ) as cur:
                row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._run(call)

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None:
        await self._run(lambda: self._db.execute(
            "INSERT INTO kvstore (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            (self._ns + key, value, expires_at),
        ))

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._db.execute("DELETE FROM kvstore WHERE key = ?", (self._ns + key,)))

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        full = self._ns + prefix

        async def call() -> list[tuple[str, str]]:
            # Range scan instead of LIKE: no escaping of % and _ in user-chosen identifiers.
            async with self._db.execute(
                "SELECT key, value FROM kvstore WHERE key >= ? AND key < ? "
                "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key",
                (full, full + "\U0010ffff", time.time()),
            ) as cur:
                rows = await cur.fetchall()
            cut = len(self._ns)
            return [(str(k)[cut:], str(v)) for k, v in rows]

        return await self._run(call)

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        now = time.time()

        async def call() -> int:
            async with self._db.execute(
                "INSERT INTO kvstore (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET "
                "value = CASE WHEN kvstore.expires_at IS NOT NULL AND kvstore.expires_at <= ? "
                "THEN excluded.value ELSE CAST(kvstore.value AS INTEGER) + ? END, "
                "expires_at = CASE WHEN kvstore.expires_at IS NOT NULL AND kvstore.expires_at <= ? "
                "THEN excluded.expires_at ELSE kvstore.expires_at END "
                "RETURNING value",
                (self._ns + key, str(amount), expires_at, now, amount, now),
            ) as cur:
                row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        return await self._run(call)

    async def close(self) -> None:
        await self._db.close()
