"""Quota counters in Redis: one script per hit takes the time from the server (``TIME``), so
replicas with skewed clocks agree on the window, and does INCR + EXPIREAT atomically. Redis
deletes a window's counter when the window ends: that is the sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stackd.db.redis import RedisDb
from stackd.kvstore.redis import DEFAULT_NAMESPACE
from stackd.quota.counter import PERIOD_SECONDS, Period

if TYPE_CHECKING:
    from stackd.config.stores import RedisStoreConfig

__all__ = ["RedisCounter"]

# KEYS[1]: the counter of a caller; ARGV[1]: the window size in seconds. The key carries no
# window: it expires at the window's end, and the first hit after that creates it again.
# EXPIREAT only on creation (the count is what this call added), so it is set once, by the store's clock.
_HIT = """
local now = tonumber(redis.call('TIME')[1])
local size = tonumber(ARGV[1])
local added = tonumber(ARGV[2])
local reset = now - (now % size) + size
local n = redis.call('INCRBY', KEYS[1], added)
if n == added then redis.call('EXPIREAT', KEYS[1], reset) end
return {n, reset}
"""


class RedisCounter:
    def __init__(self, db: RedisDb, prefix: str) -> None:
        self._db = db
        self._prefix = prefix
        self._hit = db.client.register_script(_HIT)  # EVALSHA, and EVAL again after a restart

    @classmethod
    async def open(cls, config: RedisStoreConfig) -> RedisCounter:
        db = await RedisDb.open(config, label="the quota store", section="$.server.quota.kvstore")
        return cls(db, f"{config.namespace or DEFAULT_NAMESPACE}:quota:")

    def __repr__(self) -> str:
        return f"RedisCounter({self._db.where!r}, prefix={self._prefix!r})"

    async def hit(self, key: str, period: Period, n: int = 1) -> tuple[int, float]:
        size = PERIOD_SECONDS[period]
        async with self._db.use("cannot count this request") as r:
            count, reset = await self._hit(keys=[f"{self._prefix}{period}:{key}"], args=[size, n], client=r)
        return int(count), float(reset)

    async def ping(self) -> None:
        async with self._db.use("cannot be reached") as client:
            await client.ping()

    async def close(self) -> None:
        await self._db.close()
