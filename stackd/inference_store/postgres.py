"""PostgreSQL through asyncpg, for several stackd replicas that share one history.

Needs the ``postgres`` extra (``pip install 'stackd[postgres]'``). Bodies are stored in
``json`` columns: validated by the server, kept byte for byte (``jsonb`` would reorder keys).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson

from stackd.config.stores import PostgresStoreConfig, table_of
from stackd.db.postgres import DATA_ERRORS, PostgresDb
from stackd.inference_store.api import (
    DEFAULT_LIMIT,
    Cursor,
    RejectedData,
    StoredCompletion,
    Visible,
    check_limit,
    check_order,
    filtered_rows,
    items_page,
    message_page,
    not_found,
    one_item,
    rows_of,
    unknown_cursor,
)

__all__ = ["PostgresInferenceStore"]

class PostgresInferenceStore:
    """Use :meth:`open`; a connection pool serves concurrent requests."""

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

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *params))

    async def list(
        self,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        model: str | None = None,
        order: str = "desc",
        visible: Visible | None = None,
    ) -> dict[str, Any]:
        direction = check_order(order)
        limit = check_limit(limit)
        t = self._table
        first: Cursor | None = None
        if after is not None:
            cursor_rows = await self._fetch(f"SELECT created FROM {t} WHERE id = $1", after)
            if not cursor_rows:
                raise unknown_cursor(after)
            first = (cursor_rows[0][0], after)

        async def fetch(cursor: Cursor | None, n: int) -> list[Any]:
            where: list[str] = []
            params: list[Any] = []
            if model is not None:
                params.append(model)
                where.append(f"model = ${len(params)}")
            if cursor is not None:
                params += [cursor[0], cursor[1]]
                op = "<" if direction == "desc" else ">"
                where.append(f"(created, id) {op} (${len(params) - 1}, ${len(params)})")
            columns = ("body::text, input_messages::text" if visible is None
                       else "id, created, body::text, input_messages::text, owner")
            sql = f"SELECT {columns} FROM {t}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            params.append(n)
            # COLLATE "C": ids compare bytewise, like SQLite, whatever the database's locale.
            sql += f' ORDER BY created {direction}, id COLLATE "C" {direction} LIMIT ${len(params)}'
            return await self._fetch(sql, *params)

        if visible is None:
            return items_page(await fetch(first, limit + 1), limit)
        return items_page(await filtered_rows(fetch, first, limit, visible), limit)

    async def _owned(self, completion_id: str, columns: str, visible: Visible | None) -> Sequence[Any]:
        rows = await self._fetch(f"SELECT {columns}, owner FROM {self._table} WHERE id = $1", completion_id)
        # One the caller may not read is not found: never confirm it exists.
        if rows and visible is not None and not visible(completion_id, rows[0][-1]):
            return []
        return rows

    async def get(self, completion_id: str, visible: Visible | None = None) -> dict[str, Any]:
        rows = await self._owned(completion_id, "body::text, input_messages::text", visible)
        return one_item(rows, completion_id)

    async def messages(
        self,
        completion_id: str,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        order: str = "asc",
        visible: Visible | None = None,
    ) -> dict[str, Any]:
        direction = check_order(order)
        limit = check_limit(limit)
        rows = await self._owned(completion_id, "input_messages::text", visible)
        if not rows:
            raise not_found(completion_id)
        return message_page(completion_id, orjson.loads(rows[0][0]), after, limit, direction)

    async def close(self) -> None:
        await self._db.close()
