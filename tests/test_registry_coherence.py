"""Several registries on one store (what workers and replicas are): how soon one sees another's
changes, with the cache time alone and with a store that has a change feed.

The feed of most tests here is a small store of the test's own: SQLite plus an in-process bus,
standing in for a store that announces changes across processes. The Redis store has a real
one (pub/sub), tested at the end on a real server (its own tests: test_kvstore_redis_feed.py);
SQLite and PostgreSQL have none. The cross-process behaviour with real workers is in
test_workers.py; the Redis feed between two real ``stackd serve`` replicas in
test_registry_feed_serve.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from stackd import Caller
from stackd.apis.models import Model, Shield
from stackd.errors import BadRequest, NotFound
from stackd.kvstore import ChangeFeed, KVStore, Unwatch
from stackd.kvstore.redis import RedisKVStore
from stackd.kvstore.sqlite import SqliteKVStore
from stackd.registry import CACHE_SECONDS, Registry
from stackd.testing.stores import RedisServer


class _Bus:
    def __init__(self) -> None:
        self.watchers: list[tuple[object, str, Callable[[str], None]]] = []

    def publish(self, sender: object, key: str) -> None:
        for owner, prefix, on_change in list(self.watchers):
            if owner is not sender and key.startswith(prefix):
                on_change(key)


class _NotifyingStore:
    """A SQLite store whose writes are announced to the other stores on the same bus."""

    def __init__(self, inner: SqliteKVStore, bus: _Bus) -> None:
        self.inner = inner
        self.bus = bus

    async def get(self, key: str) -> str | None:
        return await self.inner.get(key)

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None:
        await self.inner.set(key, value, expires_at=expires_at)
        self.bus.publish(self, key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)
        self.bus.publish(self, key)

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        return await self.inner.scan(prefix)

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        return await self.inner.incr(key, amount, expires_at=expires_at)

    async def close(self) -> None:
        await self.inner.close()

    async def watch(self, prefix: str, on_change: Callable[[str], None]) -> Unwatch:
        entry = (self, prefix, on_change)
        self.bus.watchers.append(entry)

        async def unwatch() -> None:
            self.bus.watchers.remove(entry)

        return unwatch


class _Echo:
    async def register_model(self, model: Model) -> Model:
        return model


class _Guard:
    async def register_shield(self, shield: Shield) -> Shield:
        return shield


def _registry(kv: KVStore) -> Registry:
    return Registry(kv, {"echo": _Echo(), "guard": _Guard()}, {"echo": "inference", "guard": "safety"})


async def _pair(tmp_path: Path, bus: _Bus | None) -> tuple[Registry, Registry]:
    stores: list[KVStore] = []
    for _ in range(2):
        inner = await SqliteKVStore.open(tmp_path / "registry.db")
        stores.append(_NotifyingStore(inner, bus) if bus is not None else inner)
    return _registry(stores[0]), _registry(stores[1])


async def test_the_sqlite_store_has_no_feed_and_the_notifying_one_has(tmp_path: Path) -> None:
    plain = await SqliteKVStore.open(tmp_path / "a.db")
    try:
        assert not isinstance(plain, ChangeFeed)
        assert isinstance(_NotifyingStore(plain, _Bus()), ChangeFeed)
        assert await _registry(plain).watch() == []
    finally:
        await plain.close()


async def test_without_a_feed_a_removal_is_seen_when_the_cache_time_runs_out(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path, None)
    try:
        b.models.ttl = 0.3  # the same rule as CACHE_SECONDS, quicker to wait for
        await a.register_model(Caller(), "m", "echo-1")
        assert (await b.get_model("m", Caller())).identifier == "m"  # cached by B now
        await a.unregister_model("m", Caller())
        began = time.monotonic()
        assert (await b.get_model("m", Caller())).identifier == "m"  # served from B's cache...
        while True:
            try:
                await b.get_model("m", Caller())
            except NotFound:
                break
            assert time.monotonic() - began < 0.3 + 1.0
        # ...until its time runs out. Lists read the store; a write never trusts the cache:
        await a.register_model(Caller(), "m", "echo-1")
        assert [m.identifier for m in await b.list_models(Caller())] == ["m"]
        await a.unregister_model("m", Caller())
        assert [m.identifier for m in await b.list_models(Caller())] == []
        await a.register_model(Caller(), "n", "echo-1")
        await b.get_model("n", Caller())
        await a.unregister_model("n", Caller())
        with pytest.raises(NotFound):
            await b.unregister_model("n", Caller())
        b.shields.ttl = 60.0
        await a.register_shield(Caller(), "s")
        await b.get_shield("s", Caller())  # cached by B for a minute
        await a.unregister_shield("s", Caller())
        with pytest.raises(NotFound):
            await b.unregister_shield("s", Caller())  # decided on the store
        with pytest.raises(BadRequest, match="shield 's' does not exist"):  # nor can it guard a model
            await b.register_model(Caller(), "g", "echo-1", input_shields=["s"])
    finally:
        await a.kv.close()
        await b.kv.close()
    assert CACHE_SECONDS == 2.0  # the bound docs/deployment.md states


async def test_with_a_feed_a_removal_is_seen_at_once(tmp_path: Path) -> None:
    bus = _Bus()
    a, b = await _pair(tmp_path, bus)
    stops = await b.watch()
    assert len(stops) == 2  # models and shields
    try:
        await a.register_model(Caller(), "m", "echo-1")
        assert (await b.get_model("m", Caller())).identifier == "m"
        await a.unregister_model("m", Caller())
        with pytest.raises(NotFound):
            await b.get_model("m", Caller())  # no wait for the cache time
        await a.register_model(Caller(), "m", "echo-2")
        assert (await b.get_model("m", Caller())).provider_resource_id == "echo-2"
        # shields the same way
        await a.register_shield(Caller(), "s")
        assert (await b.get_shield("s", Caller())).identifier == "s"
        await a.unregister_shield("s", Caller())
        with pytest.raises(NotFound):
            await b.get_shield("s", Caller())
    finally:
        for stop in stops:
            await stop()
        assert bus.watchers == []
        await a.kv.close()
        await b.kv.close()


class _NoticeDuringReads(_NotifyingStore):
    """A notice for every key read arrives while the read's reply is on its way (a race a real
    feed can lose: the reply and the notice come on different connections)."""

    on_read: Callable[[str], None] = staticmethod(lambda key: None)
    gets = 0

    async def get(self, key: str) -> str | None:
        value = await self.inner.get(key)
        self.gets += 1
        self.on_read(key)
        return value

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        rows = await self.inner.scan(prefix)
        for key, _ in rows:
            self.on_read(key)
        return rows


async def test_a_read_overtaken_by_a_notice_is_not_trusted(tmp_path: Path) -> None:
    kv = _NoticeDuringReads(await SqliteKVStore.open(tmp_path / "registry.db"), _Bus())
    registry = _registry(kv)
    try:
        await registry.register_model(Caller(), "m", "echo-1")
        registry.models.cache.clear()
        kv.on_read = registry.models.changed
        before = kv.gets
        await registry.get_model("m", Caller())
        await registry.get_model("m", Caller())
        assert kv.gets == before + 2  # the first read was not cached: it may be older than the notice
        await registry.list_models(Caller())
        await registry.get_model("m", Caller())
        assert kv.gets == before + 3  # nor was the list's
        kv.on_read = lambda key: None
        await registry.get_model("m", Caller())
        await registry.get_model("m", Caller())
        assert kv.gets == before + 4  # without a notice, a read is cached as before
    finally:
        await kv.close()


async def _refused_within(b: Registry, seconds: float, kind: str, identifier: str) -> float:
    """How soon B refuses ``identifier`` (polling); fails after ``seconds``."""
    began = time.monotonic()
    get = b.get_model if kind == "model" else b.get_shield
    while True:
        try:
            await get(identifier, Caller())
        except NotFound:
            return time.monotonic() - began
        assert time.monotonic() - began < seconds, f"{kind} {identifier!r} still served after {seconds} s"
        await asyncio.sleep(0.01)


async def test_on_redis_a_removal_is_seen_well_within_the_cache_time(redis_server: RedisServer) -> None:
    config = redis_server.config(namespace=f"t{uuid.uuid4().hex[:12]}")
    a = _registry(await RedisKVStore.open(config))
    b = _registry(await RedisKVStore.open(config))
    assert isinstance(b.kv, ChangeFeed)  # Redis has a feed, unlike SQLite (above)
    stops = await b.watch()
    assert len(stops) == 2  # models and shields (one subscription between them)
    try:
        assert b.models.ttl == CACHE_SECONDS  # the real cache time: only the feed can be this quick
        await a.register_model(Caller(), "m", "echo-1")
        assert (await b.get_model("m", Caller())).identifier == "m"  # cached by B now
        await a.unregister_model("m", Caller())
        assert await _refused_within(b, 0.5, "model", "m") < 0.5
        # a changed one too: B's copy is dropped and the new record read
        await a.register_model(Caller(), "m", "echo-1")
        assert (await b.get_model("m", Caller())).provider_resource_id == "echo-1"
        await a.unregister_model("m", Caller())
        await a.register_model(Caller(), "m", "echo-2")
        began = time.monotonic()
        while (await b.get_model("m", Caller())).provider_resource_id != "echo-2":
            assert time.monotonic() - began < 0.5
            await asyncio.sleep(0.01)
        # shields the same way
        await a.register_shield(Caller(), "s")
        assert (await b.get_shield("s", Caller())).identifier == "s"
        await a.unregister_shield("s", Caller())
        assert await _refused_within(b, 0.5, "shield", "s") < 0.5
    finally:
        for stop in stops:
            await stop()
        await a.kv.close()
        await b.kv.close()
