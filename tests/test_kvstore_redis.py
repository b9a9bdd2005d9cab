"""The Redis kvstore's index (stackd/kvstore/redis.py): a scan reads the keys written through
the store, not the database it shares with quota counters and other deployments; expired or
foreign-deleted keys leave the index; concurrent writers never leave a value unindexed."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from stackd.kvstore.redis import INDEX_SUFFIX, RedisKVStore
from stackd.testing.stores import RedisServer


async def _stores(server: RedisServer, n: int) -> list[RedisKVStore]:
    """``n`` stores (as separate replicas would have: a pool each) on one namespace of this test."""
    config = server.config(namespace=f"t{uuid.uuid4().hex[:12]}")
    return [await RedisKVStore.open(config) for _ in range(n)]


def _index(kv: RedisKVStore) -> bytes:
    return kv._prefix.encode() + INDEX_SUFFIX


async def _members(raw: Any, kv: RedisKVStore) -> set[str]:
    return set(await raw.zrange(_index(kv), 0, -1))


async def _commands(raw: Any) -> tuple[int, dict[str, int]]:
    """Commands the server processed so far: in all, and by name (a script's commands count too)."""
    total = (await raw.info("stats"))["total_commands_processed"]
    calls = {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in (await raw.info("commandstats")).items()}
    return int(total), calls


async def test_a_scan_costs_the_matching_keys_not_the_database(own_redis_server: RedisServer) -> None:
    raw = aioredis.Redis(host=own_redis_server.host, port=own_redis_server.port,
                         password=own_redis_server.password, decode_responses=True)
    kv = await RedisKVStore.open(own_redis_server.config())  # namespace stackd: as the quota counters
    try:
        # 20,000 keys not written through the store, most under its own namespace and prefix.
        foreign = ([f"stackd:model:ghost{i:05}" for i in range(5000)] + [f"stackd:quota:day:c{i}" for i in range(5000)]
                   + [f"stackd:a:model:{i}" for i in range(5000)] + [f"other:model:{i}" for i in range(5000)])
        for i in range(0, len(foreign), 1000):
            await raw.mset(dict.fromkeys(foreign[i:i + 1000], "1"))
        ours = [(f"model:m{i:02}", f"v{i}") for i in range(50)]
        for key, value in ours:
            await kv.set(key, value)
        await kv.set("shield:s", "x")
        await kv.get("model:m00")  # the pool's connection is open before counting

        total, calls = await _commands(raw)
        assert await kv.scan("model:") == ours
        total_after, calls_after = await _commands(raw)
        # ZRANGEBYLEX, MGET and the INFO calls: no walk over the 20,000 (SCAN would take 20 calls).
        assert total_after - total <= 10
        assert calls_after.get("scan", 0) == calls.get("scan", 0)
        assert calls_after.get("keys", 0) == calls.get("keys", 0)
        assert await kv.scan("") == [*ours, ("shield:s", "x")]
    finally:
        await kv.close()
        await raw.aclose()


async def test_prefixes_are_exact_for_any_utf8(redis_server: RedisServer) -> None:
    """The upper bound is prefix + byte 0xff: keys whose next character is above U+00FF (whose
    UTF-8 is above "\\xff" as a str would be sent) are in, keys past the prefix are out."""
    (kv,) = await _stores(redis_server, 1)
    keys = ["a", "ab", "a\x7f", "a\u00e9", "a\u00ff", "a\u0100", "a\uffff", "a\U0001f600x", "a\U0010ffff",
            "a\U0010ffff\U0010ffff", "b", "\u00e9", "\u00e9a", "\U0010ffff", "\U0010ffffz", "", "\x00"]
    for key in keys:
        await kv.set(key, key + "!")
    try:
        for prefix in ["", "a", "a\U0001f600", "a\U0010ffff", "\u00e9", "\U0010ffff", "\x00", "zz"]:
            assert await kv.scan(prefix) == [(k, k + "!") for k in sorted(keys) if k.startswith(prefix)], prefix
    finally:
        await kv.close()


async def test_an_expired_or_foreign_deleted_key_leaves_scan_and_the_index(
        redis_server: RedisServer, raw: Any) -> None:
    (kv,) = await _stores(redis_server, 1)
    try:
        await kv.set("model:brief", "b", expires_at=time.time() + 0.3)
        await kv.set("model:kept", "k")
        await kv.set("model:deleted-elsewhere", "d")
        assert await kv.incr("model:counter", expires_at=time.time() + 0.3) == 1
        assert await _members(raw, kv) == {"model:brief", "model:kept", "model:deleted-elsewhere", "model:counter"}
        await raw.delete(kv._prefix + "model:deleted-elsewhere")
        await asyncio.sleep(0.5)

        # The members stay until a scan finds the values gone; then only the live key is left.
        assert "model:brief" in await _members(raw, kv)
        assert await kv.scan("model:") == [("model:kept", "k")]
        assert await _members(raw, kv) == {"model:kept"}
        await kv.delete("model:kept")
        assert await raw.exists(_index(kv)) == 0  # the last member gone: Redis drops the index
    finally:
        await kv.close()


async def test_concurrent_writers_never_leave_a_value_unindexed(redis_server: RedisServer, raw: Any) -> None:
    """Two stores set, delete, count and scan the same keys at once; afterwards every live key is
    in the index and a scan agrees with GET on every key."""
    a, b = await _stores(redis_server, 2)
    rng = random.Random(4711)
    keys = [f"k{i}" for i in range(12)]
    counters = [f"n{i}" for i in range(4)]

    def op(kv: RedisKVStore) -> Any:
        roll = rng.random()
        if roll < 0.35:
            return kv.set(rng.choice(keys), str(rng.random()))
        if roll < 0.6:
            return kv.delete(rng.choice(keys + counters))
        if roll < 0.7:
            return kv.setdefault(rng.choice(keys), "default")
        if roll < 0.85:
            return kv.incr(rng.choice(counters))
        return kv.scan(rng.choice(["", "k", "k1", "n"]))

    try:
        for _ in range(10):
            await asyncio.gather(*(op(a if i % 2 else b) for i in range(100)))
            live = {k for k in keys + counters if await raw.exists(a._prefix + k)}
            assert live <= await _members(raw, a)
        expected = [(k, await b.get(k)) for k in sorted(live)]
        assert await a.scan("") == expected
        assert await _members(raw, a) == live  # the scan dropped the members of deleted keys
    finally:
        await a.close()
        await b.close()


async def test_setdefault_from_two_stores_agrees_in_one_round_trip(redis_server: RedisServer, raw: Any) -> None:
    a, b = await _stores(redis_server, 2)
    try:
        results = await asyncio.gather(*((a if i % 2 else b).setdefault("token-hash", f"v{i}") for i in range(20)))
        assert len(set(results)) == 1
        assert await a.get("token-hash") == await b.get("token-hash") == results[0]
        assert await b.scan("") == [("token-hash", results[0])]

        _, calls = await _commands(raw)
        assert await a.setdefault("token-hash", "later") == results[0]
        _, calls_after = await _commands(raw)
        ran = {name: n - calls.get(name, 0) for name, n in calls_after.items() if n != calls.get(name, 0)}
        # One script (its GET counted too), no SET NX followed by a second GET.
        assert ran == {"evalsha": 1, "get": 1, "info": 2}
    finally:
        await a.close()
        await b.close()
