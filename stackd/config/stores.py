"""Config of the stores: the metadata kvstore, the quota kvstore and the inference store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import attrs

from stackd.convert import Secret, Tagged
from stackd.errors import BadRequest, FieldError

__all__ = [
    "InferenceStoreConfig", "NoStoreConfig", "PostgresStoreConfig", "RedisStoreConfig", "SqliteStoreConfig",
    "StoreConfig",
    "DEFAULT_TABLES", "namespace_problem", "table_name_problem", "table_of",
]

# The table of each PostgreSQL store when table_name is not set, by config path.
DEFAULT_TABLES = {
    "$.metadata_store": "stackd_kvstore",
    "$.inference_store": "chat_completions",
    "$.server.quota.kvstore": "stackd_quota",
}
# A table name is spliced into SQL (identifiers cannot be bound parameters): plain identifiers only.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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
    """PostgreSQL (needs ``pip install 'stackd-server[postgres]'``).

    - ``type``: ``postgres``
    - ``host``, ``port``: the server
    - ``db``: the database
    - ``user``, ``password``: the role stackd connects as (the password is never shown or logged)
    - ``table_name``: the table; default: one per store
    - ``namespace``: a prefix of the keys, so several deployments can share one table
    """

    type: Literal["postgres"] = "postgres"
    host: str = "localhost"
    port: int = 5432
    db: str = "stackd"
    user: str = "stackd"
    password: Secret | None = None
    table_name: str | None = None
    namespace: str | None = None


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


def table_name_problem(name: str) -> str | None:
    if _IDENTIFIER.fullmatch(name):
        return None
    return f"invalid table name {name!r}: use letters, digits and '_' (at most 63, not starting with a digit)"


def namespace_problem(namespace: str) -> str | None:
    if _NAMESPACE.fullmatch(namespace):
        return None
    return f"invalid namespace {namespace!r}: use 1 to 64 letters, digits and '_', '-', '.'"


def table_of(config: PostgresStoreConfig, section: str) -> str:
    """The table of the store at config path ``section``; the loader has reported a bad name,
    this guards stores opened without it."""
    name = config.table_name or DEFAULT_TABLES[section]
    problem = table_name_problem(name)
    if problem is not None:
        raise BadRequest(f"{problem} @ {section}.table_name",
                         [FieldError(f"{section}.table_name", "expected a plain SQL identifier")])
    return name


@attrs.frozen
class NoStoreConfig:
    """``inference_store: {type: none}``: completions are not recorded (a pure proxy); the
    stored-completion routes answer 501 naming this setting.

    - ``type``: ``none``
    """

    type: Literal["none"] = "none"


# Redis stays in the union so that choosing it is told why it cannot hold completions.
InferenceStoreConfig = Annotated[
    SqliteStoreConfig | PostgresStoreConfig | RedisStoreConfig | NoStoreConfig, Tagged("type", "store")
]
