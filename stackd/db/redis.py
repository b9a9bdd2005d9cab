"""A redis-py asyncio client of one Redis database, for the stores several replicas share.

Needs the ``redis`` extra (``pip install 'stackd-server[redis]'``). The client's pool replaces a
connection that broke on the next command, so a server that comes back is used again without
a restart; until then every use is a 503 naming ``redis://host:port/db``, never the password.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stackd.db.remote import RemoteDb

if TYPE_CHECKING:
    from stackd.config.stores import RedisStoreConfig

__all__ = ["RedisDb"]

_ERRORS = (RedisError, OSError, TimeoutError)
# A server that does not answer must not hold a request: connect and reply within these.
_CONNECT_TIMEOUT = 5.0
_COMMAND_TIMEOUT = 10.0
_MAX_CONNECTIONS = 64


class RedisDb(RemoteDb):
    """Use :meth:`open` (a startup error names the server and what to check) and :meth:`use`."""

    errors = _ERRORS

    def __init__(self, client: aioredis.Redis, where: str, label: str) -> None:
        super().__init__(where, label)
        self.client = client

    @classmethod
    async def open(cls, config: RedisStoreConfig, *, label: str, section: str) -> RedisDb:
        where = f"redis://{config.host}:{config.port}/{config.db}"
        # Blocking: a burst waits for a free connection (up to the command timeout) instead of
        # failing with "too many connections".
        pool = aioredis.BlockingConnectionPool(
            host=config.host,
            port=config.port,
            db=config.db,
            password=config.password.reveal() if config.password else None,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_COMMAND_TIMEOUT,
            # One immediate retry on a fresh connection: a pooled connection that a restarted
            # server closed fails its first command. No backoff: a store that is down is a 503
            # now, not after seconds of sleeping.
            retry=Retry(NoBackoff(), 1),
            max_connections=_MAX_CONNECTIONS,
            timeout=_COMMAND_TIMEOUT,
            decode_responses=True,
        )
        client = aioredis.Redis(connection_pool=pool)
        db = cls(client, where, label)
        try:
            await client.ping()
        except _ERRORS as exc:
            await db.close()
            raise cls.cannot_connect(label, where, exc, f"{section}.host/port/db/password and that Redis is "
                                     "running and reachable") from exc
        return db

    @contextlib.asynccontextmanager
    async def use(self, doing: str = "failed") -> AsyncIterator[Any]:
        """The client; a failure of the server becomes a 503 naming it."""
        async with self.mapped(doing):
            yield self.client

    async def close(self) -> None:
        with contextlib.suppress(*_ERRORS):
            await self.client.aclose(close_connection_pool=True)
