"""Redis kvstore (redis-py asyncio, on :class:`stackd.db.redis.RedisDb`), shared by replicas.

Keys live under ``<namespace>:`` (the config's ``namespace``, default ``stackd``) so one Redis
database can hold several deployments. Expiry is Redis's own (``PXAT``); ``incr`` is one
script, so creating a counter and setting its expiry cannot be split by a crash or a race.

Change notification (for a replica's registry cache) fits here later: publish the key on
``<namespace>:changed`` after ``set`` and ``delete`` and subscribe to it in the cache.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from stackd.db.redis import RedisDb

if TYPE_CHECKING:
    from stackd.config.stores import RedisStoreConfig

__all__ = ["RedisKVStore"]

DEFAULT_NAMESPACE = "stackd"

# EXISTS before INCRBY: the expiry applies to a counter this call creates, never resets a live one.
_INCR = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and ARGV[2] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
return n
"""
_GLOB = re.compile(r"([*?\[\]\\])")
_SCAN_BATCH = 1000


def _ms(expires_at: float) -> int:
    return int(expires_at * 1000)


class RedisKVStore:
    def __init__(self, db: RedisDb, prefix: str) -> None:
        self._db = db
        self._prefix = prefix
        self._incr = db.client.register_script(_INCR)

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
        async with self._db.use() as r:
            await r.set(self._prefix + key, value, pxat=None if expires_at is None else _ms(expires_at))

    async def setdefault(self, key: str, value: str) -> str:
        async with self._db.use() as r:
            # SET NX sets only when absent (SET NX GET would be one command, but needs Redis 7).
            if await r.set(self._prefix + key, value, nx=True):
                return value
            stored = await r.get(self._prefix + key)
        return value if stored is None else str(stored)  # None: it expired in between; ours is as good

    async def delete(self, key: str) -> None:
        async with self._db.use() as r:
            await r.delete(self._prefix + key)

    async def scan(self, prefix: str) -> list[tuple[str, str]]:
        full = self._prefix + prefix
        pattern = _GLOB.sub(r"\\\1", full) + "*"
        async with self._db.use() as r:
            keys = sorted({str(k) async for k in r.scan_iter(match=pattern, count=_SCAN_BATCH)})
            pairs: list[tuple[str, str]] = []
            for i in range(0, len(keys), _SCAN_BATCH):
                batch = keys[i:i + _SCAN_BATCH]
                values = await r.mget(batch)
                # A key that expired between SCAN and MGET is gone: skipped, like any expired key.
                pairs += [(k, str(v)) for k, v in zip(batch, values, strict=True) if v is not None]
        cut = len(self._prefix)
        return [(k[cut:], v) for k, v in pairs]

    async def incr(self, key: str, amount: int = 1, *, expires_at: float | None = None) -> int:
        async with self._db.use() as r:
            value = await self._incr(keys=[self._prefix + key],
                                     args=[amount, "" if expires_at is None else _ms(expires_at)], client=r)
        return int(value)

    async def close(self) -> None:
        await self._db.close()
