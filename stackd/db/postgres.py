"""An asyncpg pool to one PostgreSQL database, for the stores several replicas share.

Needs the ``postgres`` extra (``pip install 'stackd-server[postgres]'``). The pool replaces a
connection that broke (a restarted server) on the next acquire, so a store that comes back is
used again without a restart; until then every use is a 503 naming ``user@host:port/db``,
never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]  # no stubs published

from stackd.db.remote import RemoteDb

if TYPE_CHECKING:
    from stackd.config.stores import PostgresStoreConfig

__all__ = ["DATA_ERRORS", "PostgresDb"]

# What a lost server, a refused login or a failed statement raises; all become a 503.
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
# ...except these, where the row itself is the problem (SQLSTATE classes 22 and 23): the caller maps them.
DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)

# A hung server must not hold a request forever; nor may connecting to one that does not answer.
_COMMAND_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0


async def _reset(conn: Any) -> None:
    """What a connection needs before the pool lends it again. Not asyncpg's default reset
    (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): a round trip on every release that doubled
    a quota hit's cost, for state these stores never leave behind (their advisory locks are
    transaction-scoped; they set no session variables, open no cursors and listen nowhere)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class PostgresDb(RemoteDb):
    """Use :meth:`open` (a startup error names the server and what to check) and :meth:`use`."""

    errors = _DB_ERRORS
    passthrough = DATA_ERRORS

    def __init__(self, pool: Any, where: str, label: str) -> None:
        super().__init__(where, label)  # "user@host:port/db"; never the password
        self._pool = pool

    @classmethod
    async def open(cls, config: PostgresStoreConfig, *, label: str, section: str,
                   schema: Sequence[str] = (), lock_name: str = "", max_size: int = 10) -> PostgresDb:
        """``section`` is the config path named in the startup error ("$.inference_store").
        ``schema`` runs in one transaction under an advisory lock keyed by ``lock_name``:
        replicas that start together would race on CREATE TABLE IF NOT EXISTS (it can fail
        with a unique violation in pg_type)."""
        where = f"{config.user}@{config.host}:{config.port}/{config.db}"
        try:
            pool = await asyncpg.create_pool(
                host=config.host,
                port=config.port,
                database=config.db,
                user=config.user,
                password=config.password.reveal() if config.password else None,
                min_size=1,
                max_size=max_size,
                command_timeout=_COMMAND_TIMEOUT,
                timeout=_CONNECT_TIMEOUT,
                reset=_reset,
            )
        except _DB_ERRORS as exc:
            raise cls.cannot_connect(label, where, exc, f"{section}.host/port/db/user/password and that the "
                                     "server accepts connections") from exc
        db = cls(pool, where, label)
        try:
            if schema:
                async with db.use("cannot be prepared") as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(lock_name.encode()))
                    for statement in schema:
                        await conn.execute(statement)
        except BaseException:
            await db.close()
            raise
        return db

    @contextlib.asynccontextmanager
    async def use(self, doing: str = "failed") -> AsyncIterator[Any]:
        """A pooled connection; a failure of the server becomes a 503 naming it."""
        async with self.mapped(doing), self._pool.acquire() as conn:
            yield conn

    async def close(self) -> None:
        try:
            # close() waits for borrowed connections; a stuck query must not hold the shutdown.
            await asyncio.wait_for(self._pool.close(), 10)
        except TimeoutError:
            self._pool.terminate()
