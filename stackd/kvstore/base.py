"""The kvstore interface. Values are str; expiry is an absolute UNIX time; ``incr`` is atomic."""

from __future__ import annotations

from typing import Protocol

from stackd.config.stores import RedisStoreConfig, SqliteStoreConfig, StoreConfig
from stackd.db.drivers import require_driver

__all__ = ["KVStore", "open_kvstore"]


class KVStore(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        """All live ``(key, value)`` pairs whose key starts with ``prefix``, sorted by key."""
        ...

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        """Add ``amount`` and return the new value in one atomic step (never read-then-write).

        ``expires_at`` applies when the counter is created; an expired counter restarts at 0."""
        ...

    async def close(self) -> None: ...


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
