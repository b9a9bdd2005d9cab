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

from stackd.db.sqlite import SqliteDb
from stackd.inference_store.api import (
    RejectedData,
    StoredCompletion,
    rows_of,
)
from stackd.inference_store.sql import SqlHistory

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


class SqliteInferenceStore(SqlHistory):
    """Use :meth:`open`; one connection serves every call (aiosqlite runs it in its own thread)."""

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        self._table = _TABLE
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

    def _param(self, n: int) -> str:
        return "?"

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        async with self._db.use() as conn, conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def close(self) -> None:
        await self._db.close()
