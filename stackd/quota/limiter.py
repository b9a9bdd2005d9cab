"""The quota the gate applies (:class:`stackd.admission.QuotaCounter`): an authenticated caller
is keyed by a hash of its principal, an anonymous one by its client address."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping

import attrs

from stackd.caller import Caller
from stackd.config.schema import QuotaConfig
from stackd.config.stores import RedisStoreConfig, SqliteStoreConfig, StoreConfig
from stackd.db.drivers import require_driver
from stackd.errors import QuotaExceeded
from stackd.quota.coalesce import CoalescingCounter
from stackd.quota.counter import Counter, Period
from stackd.quota.sqlite import SqliteCounter

__all__ = ["DEFAULT_AUTHENTICATED_MAX", "QuotaLimiter", "open_counter", "open_quota"]

DEFAULT_AUTHENTICATED_MAX = 1000


@attrs.define
class QuotaLimiter:
    counter: Counter
    period: Period
    anonymous_max: int
    authenticated_max: int

    async def count(self, caller: Caller) -> Mapping[str, str]:
        if caller.principal is not None:
            # A hash: the store never holds a principal (a custom endpoint's may be anything).
            key = "p:" + hashlib.sha256(caller.principal.encode()).hexdigest()[:32]
            limit = self.authenticated_max
        else:
            key = "a:" + (caller.client_address or "unknown")
            limit = self.anonymous_max
        count, resets_at = await self.counter.hit(key, self.period)
        reset = max(0, math.ceil(resets_at - time.time()))
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
            "X-RateLimit-Reset": str(reset),
        }
        if count > limit:
            raise QuotaExceeded("Quota exceeded", headers={**headers, "Retry-After": str(reset)})
        return headers

    async def ping(self) -> None:
        await self.counter.ping()

    async def close(self) -> None:
        await self.counter.close()


async def open_counter(store: StoreConfig) -> Counter:
    if isinstance(store, SqliteStoreConfig):
        return await SqliteCounter.open(store.db_path)
    require_driver(store.type, "$.server.quota.kvstore")
    if isinstance(store, RedisStoreConfig):
        from stackd.quota.redis import RedisCounter

        return await RedisCounter.open(store)
    from stackd.quota.postgres import PostgresCounter

    return await PostgresCounter.open(store)


async def open_quota(config: QuotaConfig) -> QuotaLimiter:
    counter = CoalescingCounter(await open_counter(config.kvstore))
    authenticated = config.authenticated_max_requests
    return QuotaLimiter(counter, config.period, config.anonymous_max_requests,
                        DEFAULT_AUTHENTICATED_MAX if authenticated is None else authenticated)
