"""The kvstore interface. Values are str; expiry is an absolute UNIX time; ``incr`` is atomic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from stackd.config.stores import RedisStoreConfig, SqliteStoreConfig, StoreConfig
from stackd.db.drivers import require_driver

__all__ = ["ChangeFeed", "KVStore", "Unwatch", "open_kvstore", "watch_changes"]

Unwatch = Callable[[], Awaitable[None]]


class KVStore(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        """All live ``(key, value)`` pairs whose key starts with ``prefix``, sorted by key."""
        ...

    async def setdefault(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there already (no expiry); return the
        stored value. Atomic across processes: of several racing, all get the first one's value."""
        ...

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        """Add ``amount`` and return the new value in one atomic step (never read-then-write).

        ``expires_at`` applies when the counter is created; an expired counter restarts at 0."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ChangeFeed(Protocol):
    """The optional change notification of a kvstore shared by several processes.

    A store that can tell every process on it which keys changed implements ``watch``; its own
    ``set``/``delete`` (and a ``setdefault`` that stores) announce the key, to every watcher of
    the store, the writing process's included; ``incr`` need not. Readers that cache (the
    registry) then drop an entry as soon as the notice arrives instead of when their cache time
    runs out. The Redis store has one (pub/sub); SQLite and PostgreSQL (which could, with
    LISTEN/NOTIFY) do not, and are read on the cache's time alone. Notices may be lost (while a
    connection reconnects), so a cache keeps its time limit either way.
    """

    async def watch(self, prefix: str, on_change: Callable[[str], None]) -> Unwatch:
        """From now on, call ``on_change(key)`` (on the event loop, never blocking) for every key
        under ``prefix`` set or deleted by any process of this store; awaiting the returned
        function stops it."""
        ...


async def watch_changes(kv: KVStore, prefix: str, on_change: Callable[[str], None]) -> Unwatch | None:
    """Watch ``prefix`` when ``kv`` has a change feed; None when it has not (cache time only)."""
    if isinstance(kv, ChangeFeed):
        return await kv.watch(prefix, on_change)
    return None


async def open_kvstore(config: StoreConfig, namespace: str = "", *, section: str = "$.metadata_store") -> KVStore:
    """Open (and create if needed) the store named by ``config``; ``section`` is its config path,
    named in errors. Redis and PostgreSQL need their extras (:mod:`stackd.db.drivers`)."""
    if isinstance(config, SqliteStoreConfig):
        from stackd.kvstore.sqlite import SqliteKVStore

        return await SqliteKVStore.open(config.db_path, namespace)
    require_driver(config.type, section)
    if isinstance(config, RedisStoreConfig):
        from stackd.kvstore.redis import RedisKVStore

        return await RedisKVStore.open(config, namespace, section=section)
    from stackd.kvstore.postgres import PostgresKVStore

    return await PostgresKVStore.open(config, namespace, section=section)
