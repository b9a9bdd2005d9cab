"""The one connection layer of the stores: opening, pragmas or pools, error mapping to a 503
that names the store (never its password), reopening after a failure, closing.

The kvstores, the quota counters and the inference stores build on :class:`SqliteDb` (one
aiosqlite connection to a file), :class:`stackd.db.postgres.PostgresDb` (an asyncpg pool) and
:class:`stackd.db.redis.RedisDb` (a redis-py client). The last two are imported on use: their
drivers are the ``postgres`` and ``redis`` extras.
"""

from stackd.db.sqlite import SqliteDb, store_failed

__all__ = ["SqliteDb", "store_failed"]
