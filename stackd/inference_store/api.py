"""What every inference store backend offers, and the request checks and shapes they share.

The wire shapes follow Llama Stack 0.2.x (``ListOpenAIChatCompletionResponse``: ``object``,
``data``, ``has_more``, ``first_id``, ``last_id``; each item the ``chat.completion`` body plus
``input_messages``) and OpenAI's ``GET /v1/chat/completions/{id}/messages`` (message items
with ``id`` and ``content_parts``, default order ``asc``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

from stackd.errors import BadRequest, FieldError, NotFound, UpstreamBadResponse, quote_id
from stackd.json_depth import STORED_MAX_DEPTH, deeper_than

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "InferenceStore",
    "Order",
    "RejectedData",
    "StoredCompletion",
    "Visible",
    "filtered_rows",
    "check_completion",
    "rows_of",
    "check_limit",
    "check_order",
    "item_of",
    "items_page",
    "one_item",
    "list_page",
    "message_page",
    "not_found",
    "unknown_cursor",
]

log = logging.getLogger("stackd.inference_store")

Order = Literal["asc", "desc"]

DEFAULT_LIMIT = 20
# A page is loaded into memory and serialised at once; a cap keeps one request from pulling a
# whole table. Refused rather than silently clamped so a client never mistakes a short page
# for the end of the list.
MAX_LIMIT = 1000


class RejectedData(ValueError):
    """The database refused a row for its content (a NUL byte in an id...); retrying cannot help."""


StoredCompletion = tuple[dict[str, Any], list[dict[str, Any]]] | tuple[dict[str, Any], list[dict[str, Any]], str | None]
"""One write: the ``chat.completion`` body, the input messages that produced it, and (when
auth is on) its owner as JSON (:func:`stackd.auth.policy.owner_json`)."""

Visible = Callable[[str, str | None], bool]
"""``visible(completion_id, owner_json)``: may the caller read this record (access_policy)."""

# A filtered list reads rows in batches until a page is full; this many batches at most, so
# a caller who may see almost nothing cannot make one request scan the whole table.
MAX_FILTER_BATCHES = 50


@runtime_checkable
class InferenceStore(Protocol):
    """Stored chat completions. ``list`` and ``messages`` return the response bodies as dicts."""

    async def store(self, completion: dict[str, Any], input_messages: list[dict[str, Any]]) -> None:
        """Keep one completion; a second one with the same ``id`` replaces the first."""
        ...

    async def store_many(self, items: Sequence[StoredCompletion]) -> None:
        """Keep several completions in one transaction."""
        ...

    async def list(
        self,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        model: str | None = None,
        order: str = "desc",
        visible: Visible | None = None,
    ) -> dict[str, Any]: ...

    async def get(self, completion_id: str, visible: Visible | None = None) -> dict[str, Any]: ...

    async def messages(
        self,
        completion_id: str,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        order: str = "asc",
        visible: Visible | None = None,
    ) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def check_order(order: Any) -> Order:
    if order in ("asc", "desc"):
        return order  # type: ignore[no-any-return]
    raise BadRequest(
        f"invalid order {order!r}: use 'asc' (oldest first) or 'desc' (newest first)",
        [FieldError("$.query.order", "expected 'asc' or 'desc'")],
    )


def check_limit(limit: Any) -> int:
    if isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= MAX_LIMIT:
        return limit
    raise BadRequest(
        f"invalid limit {limit!r}: use an integer from 1 to {MAX_LIMIT}, and page on with 'after'",
        [FieldError("$.query.limit", f"expected an integer from 1 to {MAX_LIMIT}")],
    )


def check_completion(completion: dict[str, Any], input_messages: list[dict[str, Any]]) -> None:
    """Refuse, at the caller, a body that could not be listed or fetched later.

    A ``ValueError`` here is a bug in the caller (the server stores what a provider returned
    after checking it), so it is raised before the write is queued, not lost in a batch.
    """
    if not isinstance(completion, dict):
        raise ValueError(f"a stored completion must be a dict, got {type(completion).__name__}")
    cid = completion.get("id")
    if not isinstance(cid, str) or not cid:
        raise ValueError("a stored completion needs a non-empty string 'id'")
    created = completion.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise ValueError(f"completion {cid!r}: 'created' must be an integer Unix time, got {created!r}")
    if not isinstance(completion.get("model"), str):
        raise ValueError(f"completion {cid!r}: 'model' must be a string")
    if not isinstance(input_messages, list) or not all(isinstance(m, dict) for m in input_messages):
        raise ValueError(f"completion {cid!r}: input_messages must be a list of dicts")


def rows_of(items: Sequence[StoredCompletion]) -> list[tuple[str, int, str, str, str, str | None]]:
    """The ``(id, created, model, body, input_messages, owner)`` rows of a batch, each checked first."""
    rows = []
    for item in items:
        completion, input_messages = item[0], item[1]
        owner = item[2] if len(item) > 2 else None
        check_completion(completion, input_messages)
        rows.append((
            completion["id"],
            completion["created"],
            completion["model"],
            orjson.dumps(completion).decode(),
            orjson.dumps(input_messages).decode(),
            owner,
        ))
    return rows


Cursor = tuple[int, str]
FetchRows = Callable[[Cursor | None, int], Awaitable[Sequence[Sequence[Any]]]]


async def filtered_rows(fetch: FetchRows, first: Cursor | None, limit: int, visible: Visible) -> list[tuple[Any, Any]]:
    """Up to ``limit + 1`` ``(body, input_messages)`` rows the caller may read, in order.

    ``fetch(cursor, n)`` returns up to ``n`` rows ``(id, created, body, input_messages, owner)``
    after ``cursor`` in the list's order. Lists filter exactly as get does, so a page holds only
    what the caller could fetch one by one, and ``has_more`` / ``last_id`` page on among those.
    """
    kept: list[tuple[Any, Any]] = []
    cursor = first
    batch = limit + 1
    for _ in range(MAX_FILTER_BATCHES):
        rows = await fetch(cursor, batch)
        for cid, _created, body, inputs, owner in rows:
            if visible(cid, owner):
                kept.append((body, inputs))
                if len(kept) > limit:
                    return kept
        if len(rows) < batch:
            return kept
        cursor = (rows[-1][1], rows[-1][0])
        batch = min(batch * 2, MAX_LIMIT + 1)
    return kept


def not_found(completion_id: str) -> NotFound:
    return NotFound(
        f"chat completion {quote_id(completion_id)} not found: only completions created through this server "
        "are stored; list them with GET /v1/chat/completions"
    )


def unknown_cursor(after: str, what: str = "chat completion") -> BadRequest:
    return BadRequest(
        f"invalid 'after' cursor {quote_id(after)}: no stored {what} has this id; pass the last_id "
        "of the previous page, or leave 'after' out to start from the beginning",
        [FieldError("$.query.after", f"unknown {what} id")],
    )


def item_of(body: str | bytes, input_messages: str | bytes) -> dict[str, Any]:
    """The list/get item of one stored row: the body as returned to the client, plus its inputs."""
    item: dict[str, Any] = orjson.loads(body)
    item.setdefault("object", "chat.completion")
    item["input_messages"] = orjson.loads(input_messages)
    return item


# Ids of stored rows that cannot be served, logged once each (not once per list that meets them).
_unservable: set[str] = set()


def _servable(item: dict[str, Any]) -> bool:
    """False (and logged once) for a row nested deeper than an answer can carry.

    stackd 0.1.0 stored such rows; one of them made every page that included it a 500, and no
    route can delete a stored completion. They are left out of lists and refused on get.
    """
    loc = deeper_than(item, STORED_MAX_DEPTH)
    if loc is None:
        return True
    cid = str(item.get("id"))
    if cid not in _unservable:
        _unservable.add(cid)
        log.warning("stored chat completion %s is nested deeper than %d levels (at %s) and cannot be "
                    "answered; it is left out of lists", quote_id(cid), STORED_MAX_DEPTH, loc)
    return False


def one_item(rows: Sequence[Sequence[Any]], completion_id: str) -> dict[str, Any]:
    """The item of a get, whose query found ``rows``."""
    if not rows:
        raise not_found(completion_id)
    item = item_of(rows[0][0], rows[0][1])
    if not _servable(item):
        raise UpstreamBadResponse(
            f"stored chat completion {quote_id(completion_id)} is nested deeper than {STORED_MAX_DEPTH} "
            "levels (written by an older stackd) and cannot be answered; lists leave it out"
        )
    return item


def items_page(rows: Sequence[Sequence[Any]], limit: int) -> dict[str, Any]:
    """The list page of a query that asked for ``limit + 1`` rows.

    A row that cannot be answered is left out, so such a page may be one item short; paging
    on with ``last_id`` still reaches every other row.
    """
    page = list_page([item_of(body, inputs) for body, inputs in rows], limit)
    data = page["data"]
    kept = [item for item in data if _servable(item)]
    if len(kept) < len(data):
        # has_more and last_id stay those of the rows read, so paging on skips nothing else.
        page["data"] = kept
        page["first_id"] = kept[0]["id"] if kept else page["first_id"]
    return page


def list_page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """``items`` holds up to ``limit + 1`` rows; the extra one only says that more exist."""
    has_more = len(items) > limit
    data = items[:limit]
    # 0.2.12 sends "" (its fields are plain str, which llama-stack-client parses) for an empty page.
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
    }


def _text_of(parts: list[Any]) -> str | None:
    texts = [p["text"] for p in parts if isinstance(p, dict) and p.get("type") == "text" and "text" in p]
    return "".join(texts) if texts else None


def message_page(
    completion_id: str,
    input_messages: list[dict[str, Any]],
    after: str | None,
    limit: int,
    order: Order,
) -> dict[str, Any]:
    """OpenAI's message list: each input message with the id ``<completion id>-<position>``."""
    if not _servable({"id": completion_id, "input_messages": input_messages}):
        raise UpstreamBadResponse(
            f"the input messages of stored chat completion {quote_id(completion_id)} are nested deeper "
            f"than {STORED_MAX_DEPTH} levels (written by an older stackd) and cannot be answered"
        )
    items: list[dict[str, Any]] = []
    for position, message in enumerate(input_messages):
        item: dict[str, Any] = {"id": f"{completion_id}-{position}"}
        item.update(message)
        content = message.get("content")
        # OpenAI's store message keeps ``content`` a string and moves a parts array to
        # ``content_parts``, so typed clients can still read ``content`` as text.
        if isinstance(content, list):
            item["content"] = _text_of(content)
            item["content_parts"] = content
        else:
            item["content_parts"] = None
        item.setdefault("name", None)
        items.append(item)
    if order == "desc":
        items.reverse()
    start = 0
    if after is not None:
        positions = [i for i, it in enumerate(items) if it["id"] == after]
        if not positions:
            raise unknown_cursor(after, f"message of chat completion {completion_id!r}")
        start = positions[0] + 1
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "has_more": start + limit < len(items),
        # OpenAI documents these as string or null.
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
