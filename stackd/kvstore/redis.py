"""Redis kvstore (redis-py asyncio, on :class:`stackd.db.redis.RedisDb`), shared by replicas.

Keys live under ``<namespace>:`` (the config's ``namespace``, default ``stackd``) so one Redis
database can hold several deployments. Expiry is Redis's own (``PXAT``).

The database is shared with the quota counters (``<namespace>:quota:...``) and with other
deployments, so ``scan`` must not walk it: every key written through the store is a member
(score 0, the key without the store's prefix) of one sorted set, the **index**, at
``<prefix>`` + :data:`INDEX_SUFFIX`. Its name holds the byte ``0xff``, which no UTF-8 string
contains, so no key of any store or counter (all ``str``) can be the index. ``scan`` reads a
lexicographic range of the index, then the values with ``MGET``: O(matching keys), not O(database).

Each write keeps the index in the same round trip and atomically (``MULTI``/``EXEC`` or one
script: ``setdefault``, and ``incr``, whose counter, expiry and member cannot be split by a crash
or a race), so no crash leaves a value unindexed. Members are removed by ``delete``; a key whose
value is gone otherwise (expired, or deleted by another writer) keeps its member until a scan
finds the value missing and removes it, only if the key is still absent then.

Change notification (for a replica's registry cache) fits here later: publish the key on
``<namespace>:changed`` after ``set`` and ``delete`` and subscribe to it in the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stackd.db.redis import RedisDb

if TYPE_CHECKING:
    from stackd.config.stores import RedisStoreConfig

__all__ = ["INDEX_SUFFIX", "RedisKVStore"]

DEFAULT_NAMESPACE = "stackd"
# The index of a store is its prefix + this. 0xff is in no UTF-8 string: no key can collide.
INDEX_SUFFIX = b"\xffkeys"

# In every script: KEYS[1] the key, KEYS[2] the index, ARGV[1] the index member (the key without
# the store's prefix). A script runs atomically, so the index changes with the value.

# EXISTS before INCRBY: the expiry applies to a counter this call creates, never resets a live
# one, and only a created counter is a new member.
_INCR = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if created then
  if ARGV[3] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
end
return n
"""
# The live value wins; an expired one reads as absent (GET does not see it) and is replaced.
_SETDEFAULT = """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return ARGV[2]
"""
# KEYS[1] the index, KEYS[2..] keys a scan found without a value, ARGV their members. A key set
# again since the scan read it is live now and keeps its member.
_FORGET = """
local removed = 0
for i, member in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then removed = removed + redis.call('ZREM', KEYS[1], member) end
end
return removed
"""
_SCAN_BATCH = 1000


def _ms(expires_at: float) -> int:
    return int(expires_at * 1000)


def _lex_range(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the members starting with ``prefix``: from the prefix itself up to,
    not including, prefix + 0xff. Members are UTF-8, so no member has 0xff after the prefix and
    every member that does not start with it sorts outside (as bytes: a str "\\xff" would be
    sent as UTF-8 0xc3 0xbf and cut off members with a larger next character)."""
    raw = prefix.encode()
    return b"[" + raw, b"(" + raw + b"\xff"


class RedisKVStore:
    def __init__(self, db: RedisDb, prefix: str) -> None:
        self._db = db
        self._prefix = prefix
        self._index = prefix.encode() + INDEX_SUFFIX
        self._incr = db.client.register_script(_INCR)
        self._setdefault = db.client.register_script(_SETDEFAULT)
        self._forget = db.client.register_script(_FORGET)

    @classmethod
    async def open(cls, config: RedisStoreConfig, namespace: str = "", *,
                   section: str = "$.metadata_store") -> RedisKVStore:
        db = await RedisDb.open(config, label="the Redis store", section=section)
        prefix = f"{config.namespace or DEFAULT_NAMESPACE}:" + (f"{namespace}:" if namespace else "")
        return cls(db, prefix)

    def __repr__(self) -> str:
        return f"RedisKVStore({self._db.where!r}, prefix={self._prefix!r})"

    async def get(self, key: str) -> str | None:
        async with self._db.use() as r:
            value = await r.get(self._prefix + key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, expires_at: float | None = None) -> None:
        async with self._db.use() as r, r.pipeline(transaction=True) as tx:
            tx.set(self._prefix + key, value, pxat=None if expires_at is None else _ms(expires_at))
            tx.zadd(self._index, {key: 0})
            await tx.execute()

    async def setdefault(self, key: str, value: str) -> str:
        async with self._db.use() as r:
            stored = await self._setdefault(keys=[self._prefix + key, self._index], args=[key, value], client=r)
        return str(stored)

    async def delete(self, key: str) -> None:
        async with self._db.use() as r, r.pipeline(transaction=True) as tx:
            tx.delete(self._prefix + key)
            tx.zrem(self._index, key)
            await tx.execute()

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        low, high = _lex_range(prefix)
        pairs: list[tuple[str, str]] = []
        async with self._db.use() as r:
            while True:
                members = [str(m) for m in await r.zrangebylex(self._index, low, high, start=0, num=_SCAN_BATCH)]
                if not members:
                    break
                pairs += await self._values(r, members)
                if len(members) < _SCAN_BATCH:
                    break
                low = b"(" + members[-1].encode()
        return pairs

    async def _values(self, r: Any, members: list[str]) -> list[tuple[str, str]]:
        """The live ``(member, value)`` pairs of a batch, in its order; the members whose value
        is gone are skipped, like any expired key, and dropped from the index."""
        values = await r.mget([self._prefix + m for m in members])
        gone = [m for m, v in zip(members, values, strict=True) if v is None]
        if gone:
            await self._forget(keys=[self._index, *(self._prefix + m for m in gone)], args=gone, client=r)
        return [(m, str(v)) for m, v in zip(members, values, strict=True) if v is not None]

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        async with self._db.use() as r:
            value = await self._incr(keys=[self._prefix + key, self._index],
                                     args=[key, amount, "" if expires_at is None else _ms(expires_at)], client=r)
        return int(value)

    async def close(self) -> None:
        await self._db.close()
