"""Config of the stores: the metadata kvstore, the quota kvstore and the inference store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import attrs

from stackd.convert import Secret, Tagged

__all__ = ["InferenceStoreConfig", "NoStoreConfig", "PostgresStoreConfig", "RedisStoreConfig", "SqliteStoreConfig",
           "StoreConfig"]


@attrs.frozen
class SqliteStoreConfig:
    db_path: Path
    type: Literal["sqlite"] = "sqlite"


@attrs.frozen
class PostgresStoreConfig:
    type: Literal["postgres"] = "postgres"
    host: str = "localhost"
    port: int = 5432
    db: str = "stackd"
    user: str = "stackd"
    password: Secret | None = None
    table_name: str | None = None


@attrs.frozen
class RedisStoreConfig:
    type: Literal["redis"] = "redis"
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: Secret | None = None
    namespace: str | None = None


StoreConfig = Annotated[SqliteStoreConfig | PostgresStoreConfig | RedisStoreConfig, Tagged("type", "store")]


@attrs.frozen
class NoStoreConfig:
    """``inference_store: {type: none}``: completions are not recorded (a pure proxy)."""

    type: Literal["none"] = "none"


# Redis stays in the union so that choosing it is told why it cannot hold completions.
InferenceStoreConfig = Annotated[
    SqliteStoreConfig | PostgresStoreConfig | RedisStoreConfig | NoStoreConfig, Tagged("type", "store")
]
