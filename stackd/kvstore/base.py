"""The kvstore interface. Values are str; expiry is an absolute UNIX time; ``incr`` is atomic."""

from __future__ import annotations

from typing import Protocol

from stackd.config.stores import SqliteStoreConfig, StoreConfig

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


async def open_kvstore(config: StoreConfig, namespace: str = "") -> KVStore:
    if isinstance(config, SqliteStoreConfig):
        from stackd.kvstore.sqlite import SqliteKVStore

        return await SqliteKVStore.open(config.db_path, namespace)
    from stackd.errors import NotImplementedByProvider

    raise NotImplementedByProvider(
        f"kvstore type {config.type!r} is not available in this build of stackd; use type: sqlite"
    )
