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

The store is a :class:`stackd.kvstore.ChangeFeed`: ``set``, ``delete`` and a ``setdefault`` that
stores its value publish the key (without the store's prefix) on the store's channel,
``<prefix>`` + :data:`CHANNEL_SUFFIX`, in the same transaction or script as the write (``incr``
does not: counters are not cached). :meth:`RedisKVStore.watch` subscribes to it; all the watches
of a store share one subscription, one connection of a pool of their own (the channel's name is
not UTF-8, so that pool does not decode replies; the key of a notice is decoded by the feed).
The subscription is in place when the first ``watch`` returns. If the server goes away, the feed
logs one warning, retries with a growing pause (:data:`_RETRY_FIRST` to :data:`_RETRY_MAX`) and
logs when it receives again; notices published meanwhile are lost, which a reader's cache time
bounds (the registry's :data:`stackd.registry.CACHE_SECONDS`). A connection silent for
:data:`_IDLE_SECONDS` is pinged, and one that does not answer by the next such pause is replaced
(a peer gone without closing the connection would otherwise be waited for forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from stackd.db.redis import RedisDb

if TYPE_CHECKING:
    from stackd.config.stores import RedisStoreConfig

__all__ = ["CHANNEL_SUFFIX", "INDEX_SUFFIX", "RedisKVStore"]

log = logging.getLogger("stackd.kvstore")

DEFAULT_NAMESPACE = "stackd"
# The index of a store is its prefix + this. 0xff is in no UTF-8 string: no key can collide.
INDEX_SUFFIX = b"\xffkeys"
# The change feed's pub/sub channel of a store is its prefix + this (no key can be it either).
CHANNEL_SUFFIX = b"\xffchanged"

_RETRY_FIRST = 0.5
_RETRY_MAX = 5.0
_IDLE_SECONDS = 30.0

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
# KEYS[3] the change feed's channel: a value stored here is announced, one found is not.
_SETDEFAULT = """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
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
        self._channel = prefix.encode() + CHANNEL_SUFFIX
        self._feed: _Feed | None = None
        self._feed_lock = asyncio.Lock()
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
            tx.publish(self._channel, key)
            await tx.execute()

    async def setdefault(self, key: str, value: str) -> str:
        async with self._db.use() as r:
            stored = await self._setdefault(keys=[self._prefix + key, self._index, self._channel],
                                             args=[key, value], client=r)
        return str(stored)

    async def delete(self, key: str) -> None:
        async with self._db.use() as r, r.pipeline(transaction=True) as tx:
            tx.delete(self._prefix + key)
            tx.zrem(self._index, key)
            tx.publish(self._channel, key)
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

    # Returns a stackd.kvstore.Unwatch, spelled out: stackd.kvstore.base imports this module.
    async def watch(self, prefix: str, on_change: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """:meth:`stackd.kvstore.ChangeFeed.watch`: subscribed when this returns (unless the
        server is unreachable now: then the feed retries, with a warning, as after a loss)."""
        async with self._feed_lock:
            if self._feed is None:
                feed = _Feed(self._db, self._channel)
                await feed.start()
                self._feed = feed
            feed = self._feed
        watcher = (prefix, on_change)
        feed.watchers.append(watcher)
        stopped = False

        async def unwatch() -> None:
            nonlocal stopped
            if stopped:
                return
            stopped = True
            feed.watchers.remove(watcher)
            async with self._feed_lock:
                if not feed.watchers and self._feed is feed:
                    self._feed = None
                    await feed.stop()

        return unwatch

    async def close(self) -> None:
        async with self._feed_lock:
            feed, self._feed = self._feed, None
        if feed is not None:
            await feed.stop()
        await self._db.close()


class _Feed:
    """The subscription of one store to its channel, shared by its watchers: one connection, of
    a pool of its own that does not decode replies (the channel's name is not UTF-8)."""

    def __init__(self, db: RedisDb, channel: bytes) -> None:
        self.where = db.where
        self.channel = channel
        self.watchers: list[tuple[str, Callable[[str], None]]] = []
        main = db.client.connection_pool
        pool = aioredis.ConnectionPool(connection_class=main.connection_class, max_connections=2,
                                       **{**main.connection_kwargs, "decode_responses": False})
        self._client = aioredis.Redis(connection_pool=pool)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        try:
            await self._pubsub.subscribe(self.channel)
        except RedisDb.errors as exc:
            await self._lost(exc)
        self._task = asyncio.create_task(self._run(), name=f"change feed of {self.where}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(*RedisDb.errors):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(*RedisDb.errors):
            await self._client.aclose(close_connection_pool=True)

    async def _lost(self, exc: BaseException, *, unexpected: bool = False) -> None:
        """Drop the connection (the next turn subscribes on a new one); warn once per outage."""
        if not self._failing:
            self._failing = True
            log.warning("the change feed of the Redis store %s lost its subscription (%s: %s); retrying, "
                        "changes made meanwhile are seen when cached entries expire", self.where,
                        type(exc).__name__, exc, exc_info=exc if unexpected else None)
        with contextlib.suppress(*RedisDb.errors):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST
        pinged = False
        while True:
            try:
                if not self._pubsub.subscribed:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    await self._pubsub.subscribe(self.channel)
                    pinged = False
                if self._failing:
                    self._failing = False
                    delay = _RETRY_FIRST
                    log.info("the change feed of the Redis store %s is receiving again", self.where)
                began = loop.time()
                message = await self._pubsub.get_message(timeout=_IDLE_SECONDS)
                if message is not None:
                    pinged = False
                    if message["type"] == "message":
                        self._deliver(message["data"])
                elif loop.time() - began >= _IDLE_SECONDS:
                    if pinged:
                        raise ConnectionError(f"no answer to PING in {_IDLE_SECONDS:g} s")
                    await self._pubsub.ping()
                    pinged = True
            except RedisDb.errors as exc:
                await self._lost(exc)
            except Exception as exc:  # noqa: BLE001 - not the server's: a bug, which must not end the feed
                await self._lost(exc, unexpected=True)

    def _deliver(self, data: bytes) -> None:
        key = data.decode(errors="replace")
        for prefix, on_change in list(self.watchers):
            if key.startswith(prefix):
                try:
                    on_change(key)
                except Exception:
                    log.exception("a change feed watcher of %s failed on %r", self.where, key)
