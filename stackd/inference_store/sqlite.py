"""The embedded default: one SQLite file through aiosqlite, so no query blocks the event loop.

Rows hold the whole ``chat.completion`` body as JSON text (0.2.12 kept only ``choices`` and
lost ``usage`` and ``system_fingerprint``). WAL lets readers run while a batch is written and
lets several stackd processes share one file.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from stackd.db.sqlite import SqliteDb
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

__all__ = ["SqliteInferenceStore"]

log = logging.getLogger(__name__)

_TABLE = "chat_completions"

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
    " id TEXT PRIMARY KEY, created INTEGER NOT NULL, model TEXT NOT NULL,"
    " body TEXT NOT NULL, input_messages TEXT NOT NULL, owner TEXT)",
    # (created, id) is the sort key and the cursor; the model index serves the filtered list.
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_created_id ON {_TABLE} (created, id)",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_model_created_id ON {_TABLE} (model, created, id)",
)

# A completion keeps the owner it was first written with: an id the upstream repeats must not
# hand one caller's record to another.
_UPSERT = (
    f"INSERT INTO {_TABLE} (id, created, model, body, input_messages, owner) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET created = excluded.created, model = excluded.model, "
    "body = excluded.body, input_messages = excluded.input_messages "
    f"WHERE {_TABLE}.owner IS excluded.owner"
)


async def _add_owner(conn: aiosqlite.Connection) -> None:
    async with conn.execute(f"PRAGMA table_info({_TABLE})") as cursor:
        columns = {row[1] for row in await cursor.fetchall()}
    if "owner" not in columns:  # a store written before owners were recorded: unowned rows
        await conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN owner TEXT")


class SqliteInferenceStore:
    """Use :meth:`open`; one connection serves every call (aiosqlite runs it in its own thread)."""

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        # Statements of one connection interleave across coroutines; the lock keeps a batch's
        # BEGIN ... COMMIT from swallowing another writer's statements.
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqliteInferenceStore({str(self._db.path)!r})"

    @classmethod
    async def open(cls, db_path: Path) -> SqliteInferenceStore:
        return cls(await SqliteDb.open(db_path, _SCHEMA, label="the inference store",
                                       setting="inference_store.db_path", migrate=_add_owner))

    async def store(self, completion: dict[str, Any], input_messages: list[dict[str, Any]]) -> None:
        await self.store_many([(completion, input_messages)])

    async def store_many(self, items: Sequence[StoredCompletion]) -> None:
        rows = rows_of(items)
        if not rows:
            return
        async with self._write_lock:
            try:
                async with self._db.use() as conn:
                    await conn.execute("BEGIN IMMEDIATE")
                    try:
                        await conn.executemany(_UPSERT, rows)
                        await conn.execute("COMMIT")
                    except BaseException:
                        await conn.execute("ROLLBACK")
                        raise
            except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError) as exc:
                raise RejectedData(
                    f"the inference store {str(self._db.path)!r} refused a row: {exc}"
                ) from exc

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        async with self._db.use() as conn, conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

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
        first: Cursor | None = None
        if after is not None:
            cursor_rows = await self._fetch(f"SELECT created FROM {_TABLE} WHERE id = ?", (after,))
            if not cursor_rows:
                raise unknown_cursor(after)
            first = (cursor_rows[0][0], after)

        async def fetch(cursor: Cursor | None, n: int) -> list[sqlite3.Row]:
            where: list[str] = []
            params: list[Any] = []
            if model is not None:
                where.append("model = ?")
                params.append(model)
            if cursor is not None:
                # Row values order by (created, id), so rows that share a second neither repeat
                # nor vanish between pages.
                where.append("(created, id) " + ("<" if direction == "desc" else ">") + " (?, ?)")
                params += [cursor[0], cursor[1]]
            columns = "body, input_messages" if visible is None else "id, created, body, input_messages, owner"
            sql = f"SELECT {columns} FROM {_TABLE}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += f" ORDER BY created {direction}, id {direction} LIMIT ?"
            params.append(n)
            return await self._fetch(sql, params)

        if visible is None:
            return items_page(await fetch(first, limit + 1), limit)
        return items_page(await filtered_rows(fetch, first, limit, visible), limit)

    async def _owned(self, completion_id: str, columns: str, visible: Visible | None) -> Sequence[sqlite3.Row]:
        rows = await self._fetch(f"SELECT {columns}, owner FROM {_TABLE} WHERE id = ?", (completion_id,))
        # One the caller may not read is not found: never confirm it exists.
        if rows and visible is not None and not visible(completion_id, rows[0][-1]):
            return []
        return rows

    async def get(self, completion_id: str, visible: Visible | None = None) -> dict[str, Any]:
        return one_item(await self._owned(completion_id, "body, input_messages", visible), completion_id)

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
        rows = await self._owned(completion_id, "input_messages", visible)
        if not rows:
            raise not_found(completion_id)
        return message_page(completion_id, orjson.loads(rows[0][0]), after, limit, direction)

    async def close(self) -> None:
        await self._db.close()
