"""SQLite kvstore on the shared connection layer (:class:`stackd.db.SqliteDb`)."""

from __future__ import annotations

import time
from pathlib import Path

from stackd.db.sqlite import SqliteDb, store_failed

__all__ = ["SqliteKVStore", "store_failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kvstore (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL
)
"""


class SqliteKVStore:
    def __init__(self, db: SqliteDb, namespace: str) -> None:
        self._db = db
        self._ns = f"{namespace}:" if namespace else ""

    @classmethod
    async def open(cls, path: Path, namespace: str = "") -> SqliteKVStore:
        return cls(await SqliteDb.open(path, [_SCHEMA]), namespace)

    def __repr__(self) -> str:
        return f"SqliteKVStore({str(self._db.path)!r}, namespace={self._ns!r})"

    async def get(self, key: str) -> str | None:
        # execute_fetchall: one trip to aiosqlite's thread (execute, fetch and close are three).
        async with self._db.use() as db:
            rows = list(await db.execute_fetchall(
                "SELECT value FROM kvstore WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (self._ns + key, time.time()),
            ))
        return str(rows[0][0]) if rows else None

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None:
        async with self._db.use() as db:
            await db.execute(
                "INSERT INTO kvstore (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (self._ns + key, value, expires_at),
            )

    async def setdefault(self, key: str, value: str) -> str:
        async with self._db.use() as db:
            # An expired row counts as absent: it is replaced, as a get would not see it.
            await db.execute(
                "INSERT INTO kvstore (key, value, expires_at) VALUES (?, ?, NULL) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = NULL "
                "WHERE kvstore.expires_at IS NOT NULL AND kvstore.expires_at <= ?",
                (self._ns + key, value, time.time()),
            )
            rows = await db.execute_fetchall("SELECT value FROM kvstore WHERE key = ?", (self._ns + key,))
        (row,) = rows
        return str(row[0])

    async def delete(self, key: str) -> None:
        async with self._db.use() as db:
            await db.execute("DELETE FROM kvstore WHERE key = ?", (self._ns + key,))

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        full = self._ns + prefix
        # Range scan instead of LIKE: no escaping of % and _ in user-chosen identifiers.
        async with self._db.use() as db:
            rows = await db.execute_fetchall(
                "SELECT key, value FROM kvstore WHERE key >= ? AND key < ? "
                "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key",
                (full, full + "\U0010ffff", time.time()),
            )
        cut = len(self._ns)
        return [(str(k)[cut:], str(v)) for k, v in rows]

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        now = time.time()
        async with self._db.use() as db:
            rows = await db.execute_fetchall(
                "INSERT INTO kvstore (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET "
                "value = CASE WHEN kvstore.expires_at IS NOT NULL AND kvstore.expires_at <= ? "
                "THEN excluded.value ELSE CAST(kvstore.value AS INTEGER) + ? END, "
                "expires_at = CASE WHEN kvstore.expires_at IS NOT NULL AND kvstore.expires_at <= ? "
                "THEN excluded.expires_at ELSE kvstore.expires_at END "
                "RETURNING value",
                (self._ns + key, str(amount), expires_at, now, amount, now),
            )
        (row,) = rows  # RETURNING gives one row
        return int(row[0])

    async def close(self) -> None:
        await self._db.close()
