"""The kvstores (SQLite, and Redis and PostgreSQL on throwaway servers): persistence, prefix
scans, expiry, and increments that are exact under concurrency."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from stackd.config.stores import SqliteStoreConfig, StoreConfig
from stackd.kvstore import open_kvstore


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """A store of this test alone: a file, a Redis namespace or a PostgreSQL table."""
    if request.param == "sqlite":
        return SqliteStoreConfig(db_path=tmp_path / "sub" / "kv.db")
    unique = uuid.uuid4().hex[:12]
    if request.param == "redis":
        server: Any = request.getfixturevalue("redis_server")
        return server.config(namespace=f"t{unique}")  # type: ignore[no-any-return]
    server = request.getfixturevalue("pg_server")
    return server.config(table_name=f"kv_{unique}")  # type: ignore[no-any-return]


async def test_set_get_delete_scan_and_persistence(config: StoreConfig) -> None:
    kv = await open_kvstore(config, namespace="a")
    await kv.set("model:x", "1")
    await kv.set("model:y%", "2")
    await kv.set("shield:z", "3")
    # Characters that mean something to LIKE or to Redis's MATCH are plain in a prefix.
    await kv.set("mo*del:[a]?_\\", "4")
    await kv.set("model", "5")
    assert await kv.get("model:x") == "1"
    assert await kv.scan("model:") == [("model:x", "1"), ("model:y%", "2")]
    assert await kv.scan("mo*del:[a]?_") == [("mo*del:[a]?_\\", "4")]
    await kv.delete("mo*del:[a]?_\\")
    await kv.delete("model")
    await kv.delete("model:x")
    assert await kv.get("model:x") is None
    await kv.close()

    again = await open_kvstore(config, namespace="a")
    assert await again.scan("") == [("model:y%", "2"), ("shield:z", "3")]
    other = await open_kvstore(config, namespace="b")
    assert await other.scan("") == []  # namespaces do not see each other
    await again.close()
    await other.close()


async def test_expired_values_are_gone(config: StoreConfig) -> None:
    kv = await open_kvstore(config)
    await kv.set("old", "v", expires_at=time.time() - 1)
    await kv.set("new", "v", expires_at=time.time() + 60)
    assert await kv.get("old") is None
    assert await kv.scan("") == [("new", "v")]
    await kv.close()


async def test_concurrent_increments_are_exact_across_connections(config: StoreConfig) -> None:
    stores = [await open_kvstore(config) for _ in range(4)]
    expires = time.time() + 60
    results = await asyncio.gather(*(stores[i % 4].incr("n", expires_at=expires) for i in range(200)))
    assert sorted(results) == list(range(1, 201))  # every request saw its own count
    assert await stores[0].get("n") == "200"
    for kv in stores:
        await kv.close()


async def test_setdefault_keeps_the_first_value_across_racing_connections(config: StoreConfig) -> None:
    """Replicas starting together each propose a value; all end up with one (stackd.stack's token-hash key)."""
    stores = [await open_kvstore(config) for _ in range(4)]
    results = await asyncio.gather(*(stores[i % 4].setdefault("k", f"v{i}") for i in range(40)))
    assert len(set(results)) == 1 and results[0] in {f"v{i}" for i in range(40)}
    assert await stores[1].get("k") == results[0]
    assert await stores[2].setdefault("k", "later") == results[0]
    await stores[0].set("gone", "old", expires_at=time.time() - 1)
    assert await stores[0].setdefault("gone", "new") == "new"  # an expired value counts as absent
    assert await stores[3].get("gone") == "new"
    for kv in stores:
        await kv.close()


async def test_an_expired_counter_restarts(config: StoreConfig) -> None:
    kv = await open_kvstore(config)
    assert await kv.incr("c", 5, expires_at=time.time() - 1) == 5
    # the window above is already over: the next increment starts a new one
    assert await kv.incr("c", 1, expires_at=time.time() + 60) == 1
    assert await kv.incr("c", 1, expires_at=time.time() + 60) == 2
    await kv.close()


async def test_a_live_counter_keeps_its_expiry(config: StoreConfig) -> None:
    kv = await open_kvstore(config)
    soon = time.time() + 60
    assert await kv.incr("c", expires_at=soon) == 1
    # A later expiry given to a live counter does not extend it (it applies on creation only).
    assert await kv.incr("c", 2, expires_at=soon + 3600) == 3
    await kv.set("plain", "7")
    assert await kv.incr("plain", 3) == 10  # no expiry given: none set
    await kv.close()
