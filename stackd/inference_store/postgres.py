"""PostgreSQL through asyncpg, for several stackd replicas that share one history.

Needs the ``postgres`` extra (``pip install 'stackd-server[postgres]'``). Bodies are stored in
``json`` columns: validated by the server, kept byte for byte (``jsonb`` would reorder keys).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from stackd.config.stores import PostgresStoreConfig, table_of
from stackd.db.postgres import DATA_ERRORS, PostgresDb
from stackd.inference_store.api import (
    RejectedData,
    StoredCompletion,
    rows_of,
)
from stackd.inference_store.sql import SqlHistory

__all__ = ["PostgresInferenceStore"]

class PostgresInferenceStore(SqlHistory):
    """Use :meth:`open`; a connection pool serves concurrent requests."""

    _BODY = "body::text, input_messages::text"
    _MESSAGES = "input_messages::text"
    # COLLATE "C": ids compare bytewise, like SQLite, whatever the database's locale.
    _ID_ORDER = 'id COLLATE "C"'

    def __init__(self, db: PostgresDb, table: str) -> None:
        self._db = db
        self._table = table
        t = table
        self._upsert = (
            f"INSERT INTO {t} (id, created, model, body, input_messages, owner) "
            "VALUES ($1, $2, $3, $4::json, $5::json, $6) "
            "ON CONFLICT (id) DO UPDATE SET created = EXCLUDED.created, model = EXCLUDED.model, "
            "body = EXCLUDED.body, input_messages = EXCLUDED.input_messages "
            # The owner of the first write stays: a repeated id never hands a record to another.
            f"WHERE {t}.owner IS NOT DISTINCT FROM EXCLUDED.owner"
        )

    def __repr__(self) -> str:
        return f"PostgresInferenceStore({self._db.where!r}, table={self._table!r})"

    @classmethod
    async def open(cls, config: PostgresStoreConfig) -> PostgresInferenceStore:
        t = table_of(config, "$.inference_store")
        schema = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " id TEXT PRIMARY KEY, created BIGINT NOT NULL, model TEXT NOT NULL,"
            " body JSON NOT NULL, input_messages JSON NOT NULL)",
            # Stores written before owners were recorded get the column (their rows are unowned).
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS owner TEXT",
            f"CREATE INDEX IF NOT EXISTS {t}_created_id ON {t} (created, id)",
            f"CREATE INDEX IF NOT EXISTS {t}_model_created_id ON {t} (model, created, id)",
        )
        db = await PostgresDb.open(config, label="the inference store", section="$.inference_store",
                                   schema=schema, lock_name=t)
        return cls(db, t)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            async with self._db.use() as conn:
                yield conn
        except DATA_ERRORS as exc:
            raise RejectedData(f"the inference store {self._db.where} refused a row: {exc}") from exc

    async def store(self, completion: dict[str, Any], input_messages: list[dict[str, Any]]) -> None:
        await self.store_many([(completion, input_messages)])

    async def store_many(self, items: Sequence[StoredCompletion]) -> None:
        rows = rows_of(items)
        if not rows:
            return
        async with self._connection() as conn, conn.transaction():
            await conn.executemany(self._upsert, rows)

    def _param(self, n: int) -> str:
        return f"${n}"

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *params))

    async def close(self) -> None:
        await self._db.close()
