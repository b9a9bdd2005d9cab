"""The SQLite kvstore: persistence, prefix scans, expiry, and increments that are exact under concurrency."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from stackd.config.stores import SqliteStoreConfig
from stackd.kvstore import open_kvstore


async def test_set_get_delete_scan_and_persistence(tmp_path: Path) -> None:
    config = SqliteStoreConfig(db_path=tmp_path / "sub" / "kv.db")
    kv = await open_kvstore(config, namespace="a")
    await kv.set("model:x", "1")
    await kv.set("model:y%", "2")
    await kv.set("shield:z", "3")
    assert await kv.get("model:x") == "1"
    assert await kv.scan("model:") == [("model:x", "1"), ("model:y%", "2")]
    await kv.delete("model:x")
    assert await kv.get("model:x") is None
    await kv.close()

    again = await open_kvstore(config, namespace="a")
    assert await again.scan("") == [("model:y%", "2"), ("shield:z", "3")]
    other = await open_kvstore(config, namespace="b")
    assert await other.scan("") == []  # namespaces do not see each other
    await again.close()
    await other.close()


async def test_expired_values_are_gone(tmp_path: Path) -> None:
    kv = await open_kvstore(SqliteStoreConfig(db_path=tmp_path / "kv.db"))
    await kv.set("old", "v", expires_at=time.time() - 1)
    await kv.set("new", "v", expires_at=time.time() + 60)
    assert await kv.get("old") is None
    assert await kv.scan("") == [("new", "v")]
    await kv.close()


async def test_concurrent_increments_are_exact_across_connections(tmp_path: Path) -> None:
    config = SqliteStoreConfig(db_path=tmp_path / "kv.db")
    stores = [await open_kvstore(config) for _ in range(4)]
    expires = time.time() + 60
    results = await asyncio.gather(*(stores[i % 4].incr("n", expires_at=expires) for i in range(200)))
    assert sorted(results) == list(range(1, 201))  # every request saw its own count
    assert await stores[0].get("n") == "200"
    for kv in stores:
        await kv.close()


async def test_an_expired_counter_restarts(tmp_path: Path) -> None:
    kv = await open_kvstore(SqliteStoreConfig(db_path=tmp_path / "kv.db"))
    assert await kv.incr("c", 5, expires_at=time.time() - 1) == 5
    # the window above is already over: the next increment starts a new one
    assert await kv.incr("c", 1, expires_at=time.time() + 60) == 1
    assert await kv.incr("c", 1, expires_at=time.time() + 60) == 2
    await kv.close()
