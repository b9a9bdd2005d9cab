"""The reads both SQL stores (SQLite, PostgreSQL) serve: paged lists, one completion, its input
messages. A store says how its dialect binds a parameter, reads the JSON columns as text and
orders ids bytewise, and runs a query; the paging logic is here once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from stackd.inference_store.api import (
    DEFAULT_LIMIT,
    Cursor,
    Visible,
    check_limit,
    check_order,
    filtered_rows,
    items_page,
    message_page,
    not_found,
    one_item,
    unknown_cursor,
)

__all__ = ["SqlHistory"]


class SqlHistory:
    _table: str
    _BODY = "body, input_messages"
    _MESSAGES = "input_messages"
    _ID_ORDER = "id"

    def _param(self, n: int) -> str:
        """How the ``n``-th (from 1) bound parameter is written."""
        raise NotImplementedError

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

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
            cursor_rows = await self._fetch(f"SELECT created FROM {t} WHERE id = {self._param(1)}", [after])
            if not cursor_rows:
                raise unknown_cursor(after)
            first = (cursor_rows[0][0], after)

        async def fetch(cursor: Cursor | None, n: int) -> list[Any]:
            params: list[Any] = []

            def bind(value: Any) -> str:
                params.append(value)
                return self._param(len(params))

            where: list[str] = []
            if model is not None:
                where.append(f"model = {bind(model)}")
            if cursor is not None:
                # Row values order by (created, id), so rows that share a second neither repeat
                # nor vanish between pages.
                op = "<" if direction == "desc" else ">"
                where.append(f"(created, id) {op} ({bind(cursor[0])}, {bind(cursor[1])})")
            columns = self._BODY if visible is None else f"id, created, {self._BODY}, owner"
            sql = f"SELECT {columns} FROM {t}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += f" ORDER BY created {direction}, {self._ID_ORDER} {direction} LIMIT {bind(n)}"
            return await self._fetch(sql, params)

        if visible is None:
            return items_page(await fetch(first, limit + 1), limit)
        return items_page(await filtered_rows(fetch, first, limit, visible), limit)

    async def _owned(self, completion_id: str, columns: str, visible: Visible | None) -> Sequence[Any]:
        rows = await self._fetch(f"SELECT {columns}, owner FROM {self._table} WHERE id = {self._param(1)}",
                                 [completion_id])
        # One the caller may not read is not found: never confirm it exists.
        if rows and visible is not None and not visible(completion_id, rows[0][-1]):
            return []
        return rows

    async def get(self, completion_id: str, visible: Visible | None = None) -> dict[str, Any]:
        return one_item(await self._owned(completion_id, self._BODY, visible), completion_id)

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
        rows = await self._owned(completion_id, self._MESSAGES, visible)
        if not rows:
            raise not_found(completion_id)
        return message_page(completion_id, orjson.loads(rows[0][0]), after, limit, direction)
