"""SQLite kvstore through aiosqlite (its own thread, so the event loop never blocks on disk)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiosqlite

__all__ = ["SqliteKVStore"]

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


class SqliteKVStore:
    def __init__(self, db: aiosqlite.Connection, namespace: str) -> None:
        self._db = db
        self._ns = f"{namespace}:" if namespace else ""

    @classmethod
    async def open(cls, path: Path, namespace: str = "") -> SqliteKVStore:
        path = await asyncio.to_thread(_prepare, path)
        db = await aiosqlite.connect(path, isolation_level=None)
        # WAL lets several processes share the file; the busy timeout makes them wait, not fail.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute(_SCHEMA)
        return cls(db, namespace)

    def __repr__(self) -> str:
        return f"SqliteKVStore(namespace={self._ns!r})"

    async def get(self, key: str) -> str | None:
        async with self._db.execute(
            "SELECT value FROM kvstore WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (self._ns + key, time.time()),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None:
        await self._db.execute(
            "INSERT INTO kvstore (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            (self._ns + key, value, expires_at),
        )

    async def delete(self, key: str) -> None:
        await self._db.execute("DELETE FROM kvstore WHERE key = ?", (self._ns + key,))

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        full = self._ns + prefix
        # Range scan instead of LIKE: no escaping of % and _ in user-chosen identifiers.
        async with self._db.execute(
            "SELECT key, value FROM kvstore WHERE key >= ? AND key < ? "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key",
            (full, full + "\U0010ffff", time.time()),
        ) as cur:
            rows = await cur.fetchall()
        cut = len(self._ns)
        return [(str(k)[cut:], str(v)) for k, v in rows]

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        now = time.time()
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

    async def close(self) -> None:
        await self._db.close()
