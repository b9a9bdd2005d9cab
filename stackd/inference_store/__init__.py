"""Stored chat completions: ``GET /v1/chat/completions``, ``.../{id}`` and ``.../{id}/messages``.

``open_inference_store(config)`` gives the backend named by the ``inference_store`` section;
wrap it in :class:`InferenceStoreWriter` so storing never delays an answer, and turn a stream
into its stored body with :func:`assemble_chat_stream`.
"""

from __future__ import annotations

from stackd.config.stores import PostgresStoreConfig, SqliteStoreConfig, StoreConfig
from stackd.db.drivers import require_driver
from stackd.errors import BadRequest, FieldError
from stackd.inference_store.api import DEFAULT_LIMIT, MAX_LIMIT, InferenceStore, RejectedData
from stackd.inference_store.assemble import assemble_chat_stream
from stackd.inference_store.writer import InferenceStoreWriter

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "InferenceStore",
    "InferenceStoreWriter",
    "RejectedData",
    "assemble_chat_stream",
    "open_inference_store",
]


async def open_inference_store(config: StoreConfig) -> InferenceStore:
    """Open (and create if needed) the store; failures name the place to fix."""
    if isinstance(config, SqliteStoreConfig):
        from stackd.inference_store.sqlite import SqliteInferenceStore

        return await SqliteInferenceStore.open(config.db_path)
    if isinstance(config, PostgresStoreConfig):
        require_driver(config.type, "$.inference_store")
        from stackd.inference_store.postgres import PostgresInferenceStore

        return await PostgresInferenceStore.open(config)
    kind = getattr(config, "type", type(config).__name__)
    raise BadRequest(
        f"inference_store type {kind!r} cannot hold chat completions: use 'sqlite' or 'postgres'",
        [FieldError("$.inference_store.type", "expected 'sqlite' or 'postgres'")],
    )
