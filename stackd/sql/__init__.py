"""The one SQL connection layer of the stores: opening, pragmas or pools, error mapping to a
503 that names the store, reopening after a failure, closing.

The kvstore, the quota counter and the inference store build on :class:`SqliteDb` (one
aiosqlite connection to a file) and :class:`stackd.sql.postgres.PostgresDb` (an asyncpg pool;
imported on use, as asyncpg is the ``postgres`` extra).
"""

from stackd.sql.sqlite import SqliteDb, store_failed

__all__ = ["SqliteDb", "store_failed"]
