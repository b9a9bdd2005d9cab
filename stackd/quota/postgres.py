"""Quota counters in PostgreSQL: one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` per
hit, with the window computed from the server's ``now()``, so replicas with skewed clocks
agree on the window. Rows of ended windows are deleted at most every minute."""

from __future__ import annotations

import time

from stackd.config.stores import PostgresStoreConfig, table_of
from stackd.db.postgres import PostgresDb
from stackd.quota.counter import PERIOD_SECONDS, SWEEP_EVERY, Period

__all__ = ["PostgresCounter"]


class PostgresCounter:
    def __init__(self, db: PostgresDb, table: str, prefix: str) -> None:
        self._db = db
        self._table = t = table
        self._prefix = prefix
        self._next_sweep = 0.0
        # $1: the caller's key, $2: the window size in seconds, $3: the hits to add. The window's
        # start is part of the key, so a new window starts a new row whatever the sweep has done.
        self._hit = (
            f"WITH w AS (SELECT (floor(extract(epoch FROM now()) / $2::bigint)::bigint * $2::bigint) AS start) "
            f"INSERT INTO {t} (key, count, expires_at) "
            "SELECT $1::text || '@' || w.start::text, $3::bigint, w.start + $2::bigint FROM w "
            f"ON CONFLICT (key) DO UPDATE SET count = {t}.count + excluded.count "
            "RETURNING count, expires_at"
        )
        self._sweep = f"DELETE FROM {t} WHERE expires_at <= extract(epoch FROM now())"

    @classmethod
    async def open(cls, config: PostgresStoreConfig) -> PostgresCounter:
        section = "$.server.quota.kvstore"
        t = table_of(config, section)
        schema = (f'CREATE TABLE IF NOT EXISTS {t} (key TEXT COLLATE "C" PRIMARY KEY, count BIGINT NOT NULL, '
                  "expires_at BIGINT NOT NULL)",
                  f"CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)")
        db = await PostgresDb.open(config, label="the quota store", section=section, schema=schema, lock_name=t)
        return cls(db, t, f"{config.namespace}:" if config.namespace else "")

    def __repr__(self) -> str:
        return f"PostgresCounter({self._db.where!r}, table={self._table!r})"

    async def hit(self, key: str, period: Period, n: int = 1) -> tuple[int, float]:
        size = PERIOD_SECONDS[period]
        async with self._db.use("cannot count this request") as conn:
            count, reset = await conn.fetchrow(self._hit, f"{self._prefix}{period}:{key}", size, n)
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_EVERY
                await conn.execute(self._sweep)
        return int(count), float(reset)

    async def ping(self) -> None:
        async with self._db.use("cannot be reached") as conn:
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        await self._db.close()
