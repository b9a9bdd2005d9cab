"""Config of the stores: the metadata kvstore, the quota kvstore and the inference store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import attrs

from stackd.convert import Secret, Tagged

__all__ = ["PostgresStoreConfig", "RedisStoreConfig", "SqliteStoreConfig", "StoreConfig"]


@attrs.frozen
class SqliteStoreConfig:
    """SQLite: zero set-up, one file (the embedded default).

    - ``db_path``: the database file; its folder is created. ``~`` is the home folder
    - ``type``: ``sqlite``
    """

    db_path: Path
    type: Literal["sqlite"] = "sqlite"


@attrs.frozen
class PostgresStoreConfig:
    """PostgreSQL (needs ``pip install 'stackd[postgres]'``).

    - ``type``: ``postgres``
    - ``host``, ``port``: the server
    - ``db``: the database
    - ``user``, ``password``: the role stackd connects as (the password is never shown or logged)
    - ``table_name``: the table; default: one per store
    """

    type: Literal["postgres"] = "postgres"
    host: str = "localhost"
    port: int = 5432
    db: str = "stackd"
    user: str = "stackd"
    password: Secret | None = None
    table_name: str | None = None


@attrs.frozen
class RedisStoreConfig:
    """Redis, for state shared by several replicas.

    - ``type``: ``redis``
    - ``host``, ``port``: the server
    - ``db``: the database number
    - ``password``: never shown or logged
    - ``namespace``: a prefix of every key, so several stacks can share one Redis
    """

    type: Literal["redis"] = "redis"
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: Secret | None = None
    namespace: str | None = None


StoreConfig = Annotated[SqliteStoreConfig | PostgresStoreConfig | RedisStoreConfig, Tagged("type", "store")]
