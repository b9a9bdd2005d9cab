"""PostgreSQL kvstore (asyncpg, on :class:`stackd.db.postgres.PostgresDb`), shared by replicas.

One table (``table_name``, default ``stackd_kvstore``); keys are prefixed with the config's
``namespace`` so one table can hold several deployments. Keys sort bytewise (``COLLATE "C"``),
like SQLite's, so ``scan`` is a range scan on the primary key. Expired rows are invisible at
once and deleted at most every minute.

Change notification (for a replica's registry cache) fits here later: ``NOTIFY <table>, key``
in the statements of ``set`` and ``delete``, and ``LISTEN`` on one pooled connection.
"""

from __future__ import annotations

import time

from stackd.config.stores import PostgresStoreConfig, table_of
from stackd.db.postgres import PostgresDb
from stackd.quota.counter import SWEEP_EVERY

__all__ = ["PostgresKVStore"]


class PostgresKVStore:
    def __init__(self, db: PostgresDb, table: str, prefix: str) -> None:
        self._db = db
        self._table = t = table
        self._prefix = prefix
        self._next_sweep = 0.0
        live = "(expires_at IS NULL OR expires_at > $2)"
        self._get = f"SELECT value FROM {t} WHERE key = $1 AND {live}"
        self._set = (f"INSERT INTO {t} (key, value, expires_at) VALUES ($1, $2, $3) "
                     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at")
        self._delete = f"DELETE FROM {t} WHERE key = $1"
        # An expired row counts as absent (as get would not see it); the live value stays.
        live_row = f"({t}.expires_at IS NULL OR {t}.expires_at > $3)"
        self._setdefault = (f"INSERT INTO {t} (key, value, expires_at) VALUES ($1, $2, NULL) "
                            f"ON CONFLICT (key) DO UPDATE SET "
                            f"value = CASE WHEN {live_row} THEN {t}.value ELSE EXCLUDED.value END, "
                            f"expires_at = CASE WHEN {live_row} THEN {t}.expires_at ELSE NULL END "
                            "RETURNING value")
        self._scan = f"SELECT key, value FROM {t} WHERE key >= $1 AND key < $3 AND {live} ORDER BY key"
        expired = f"{t}.expires_at IS NOT NULL AND {t}.expires_at <= $4"
        self._incr = (
            f"INSERT INTO {t} (key, value, expires_at) VALUES ($1, $2::bigint::text, $3) "
            f"ON CONFLICT (key) DO UPDATE SET "
            f"value = CASE WHEN {expired} THEN EXCLUDED.value ELSE ({t}.value::bigint + $2::bigint)::text END, "
            f"expires_at = CASE WHEN {expired} THEN EXCLUDED.expires_at ELSE {t}.expires_at END "
            "RETURNING value"
        )
        self._sweep = f"DELETE FROM {t} WHERE expires_at <= $1"

    @classmethod
    async def open(cls, config: PostgresStoreConfig, namespace: str = "", *,
                   section: str = "$.metadata_store") -> PostgresKVStore:
        t = table_of(config, section)
        schema = (f"CREATE TABLE IF NOT EXISTS {t} ("
                  ' key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL, expires_at DOUBLE PRECISION)',)
        db = await PostgresDb.open(config, label="the PostgreSQL store", section=section, schema=schema, lock_name=t)
        prefix = (f"{config.namespace}:" if config.namespace else "") + (f"{namespace}:" if namespace else "")
        return cls(db, t, prefix)

    def __repr__(self) -> str:
        return f"PostgresKVStore({self._db.where!r}, table={self._table!r}, prefix={self._prefix!r})"

    async def _swept(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        async with self._db.use() as conn:
            await conn.execute(self._sweep, now)

    async def get(self, key: str) -> str | None:
        async with self._db.use() as conn:
            value = await conn.fetchval(self._get, self._prefix + key, time.time())
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None:
        async with self._db.use() as conn:
            await conn.execute(self._set, self._prefix + key, value, expires_at)
        await self._swept(time.time())

    async def setdefault(self, key: str, value: str) -> str:
        async with self._db.use() as conn:
            # One statement: the row is locked by the upsert, so the value returned is the stored one.
            stored = await conn.fetchval(self._setdefault, self._prefix + key, value, time.time())
        return str(stored)

    async def delete(self, key: str) -> None:
        async with self._db.use() as conn:
            await conn.execute(self._delete, self._prefix + key)

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        full = self._prefix + prefix
        async with self._db.use() as conn:
            rows = await conn.fetch(self._scan, full, time.time(), full + "\U0010ffff")
        cut = len(self._prefix)
        return [(str(k)[cut:], str(v)) for k, v in rows]

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        now = time.time()
        async with self._db.use() as conn:
            value = await conn.fetchval(self._incr, self._prefix + key, amount, expires_at, now)
        await self._swept(now)
        return int(value)

    async def close(self) -> None:
        await self._db.close()
