"""The running stack: stores, providers, registry, routers and admission gate, opened and closed together."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs

from stackd.admission import PUBLIC_PATHS, Gatekeeper
from stackd.auth import build_authenticator
from stackd.auth.policy import AccessPolicy
from stackd.config.schema import ServerConfig
from stackd.config.stores import NoStoreConfig, SqliteStoreConfig, StoreConfig
from stackd.errors import UpstreamUnavailable
from stackd.guardrails import Guardrails, check_and_list
from stackd.inference_store import InferenceStoreWriter, open_inference_store
from stackd.kvstore import KVStore, StoreClaim, StoreLock, lock_store, lock_store_now, open_kvstore
from stackd.loading import LoadedConfig
from stackd.providers.build import build_providers
from stackd.quota import QuotaLimiter, open_quota
from stackd.registry import Registry
from stackd.routing import InferenceRouter, SafetyRouter
from stackd.upstream import UpstreamLimits

__all__ = ["Stack", "lock_metadata_store", "open_stack", "state_dir"]

log = logging.getLogger("stackd")

_HASH_KEY = "auth/token_hash_key"


def state_dir() -> Path:
    """Where stackd keeps its files: ``$STACKD_HOME``, else ``~/.stackd``."""
    return Path(os.environ.get("STACKD_HOME") or Path.home() / ".stackd").expanduser()


@attrs.define
class Stack:
    loaded: LoadedConfig
    metadata: KVStore
    registry: Registry
    providers: dict[str, Any]
    inference: InferenceRouter
    safety: SafetyRouter
    gate: Gatekeeper
    inference_store: InferenceStoreWriter | None = None

    def ready(self) -> dict[str, bool]:
        out = {}
        for pid, impl in self.providers.items():
            is_ready = getattr(impl, "is_ready", None)
            out[pid] = bool(is_ready()) if is_ready is not None else True
        return out


def _default_store(config: StoreConfig | None, name: str, filename: str) -> StoreConfig:
    if config is not None:
        return config
    return SqliteStoreConfig(db_path=state_dir() / name / filename)


@contextlib.contextmanager
def _in_state_dir(default: bool) -> Iterator[None]:
    """A store that failed in the state directory names the directory and STACKD_HOME, the
    setting an operator changes (the file itself was never named in their config)."""
    try:
        yield
    except UpstreamUnavailable as exc:
        if not default:
            raise
        exc.message = f"cannot use the state directory {str(state_dir())!r} (STACKD_HOME): {exc.message}"
        exc.args = (exc.message,)
        raise


def lock_metadata_store(loaded: LoadedConfig) -> StoreLock | None:
    """The metadata store's lock, taken by a supervisor for all its workers (blocking, no loop)."""
    run = loaded.run
    with _in_state_dir(run.metadata_store is None):
        return lock_store_now(_default_store(run.metadata_store, run.name, "registry.db"))


@contextlib.asynccontextmanager
async def open_stack(
    loaded: LoadedConfig, *, gate: Gatekeeper | None = None, claim: StoreClaim = StoreClaim()  # noqa: B008 - frozen
) -> AsyncIterator[Stack]:
    """The stack of ``loaded``; ``claim``: whether this process locks and reconciles the metadata
    store, or is a worker whose supervisor holds the lock (:class:`stackd.kvstore.StoreClaim`)."""
    run = loaded.run
    async with contextlib.AsyncExitStack() as exits:
        metadata_config = _default_store(run.metadata_store, run.name, "registry.db")
        with _in_state_dir(run.metadata_store is None):
            # Before anything is written: reconciling below rewrites the config's models, which
            # must never happen under another live server (see stackd.kvstore.lock).
            if claim.lock:
                lock = await lock_store(metadata_config)
                if lock is not None:
                    exits.push_async_callback(lock.release)
            metadata = await open_kvstore(metadata_config)
        exits.push_async_callback(metadata.close)

        inference_store = None
        if "inference" in loaded.served_apis() and not isinstance(run.inference_store, NoStoreConfig):
            with _in_state_dir(run.inference_store is None):
                inference_store = await _open_inference_store(loaded, exits)

        providers: dict[str, Any] = {}
        provider_apis = {pid: p.api for pid, p in loaded.providers.items()}
        policy = AccessPolicy(run.server.auth.access_policy if run.server.auth is not None else ())
        registry = Registry(metadata, providers, provider_apis,
                            max_models=run.server.max_models, max_shields=run.server.max_shields, policy=policy)
        inference = InferenceRouter(registry, providers, inference_store.submit if inference_store else None,
                                    max_stored_bytes=run.server.max_stored_completion_bytes)
        safety = SafetyRouter(registry, providers)
        routers = {"inference": inference, "safety": safety}
        limits = UpstreamLimits(run.server.max_upstream_body_bytes, run.server.max_upstream_line_bytes)
        providers.update(await build_providers(loaded.providers, routers, exits, limits))
        for unwatch in await registry.watch():
            exits.push_async_callback(unwatch)
        if claim.reconcile:
            await registry.reconcile(loaded.models, loaded.shields)
        window = run.server.guardrail_window_chars
        for line in await check_and_list(registry, window):
            if claim.reconcile:  # once per server, not once per worker
                log.info("%s", line)
        inference.guardrails = Guardrails(registry, safety, window)

        if gate is None:
            gate = await _open_gate(run.server, metadata, exits)
        yield Stack(loaded, metadata, registry, providers, inference, safety, gate, inference_store)


async def _token_hash_key(metadata: KVStore) -> bytes:
    """The key of the hashes that stand for tokens (a custom endpoint's caller without
    attributes): kept in the metadata store so an owner's namespace survives a restart."""
    # Set only if absent, in one step: replicas starting together on a shared store agree on one key.
    stored = await metadata.get(_HASH_KEY) or await metadata.setdefault(_HASH_KEY, secrets.token_hex(32))
    return bytes.fromhex(stored)


async def _open_gate(server: ServerConfig, metadata: KVStore, exits: contextlib.AsyncExitStack) -> Gatekeeper:
    quota: QuotaLimiter | None = None
    if server.quota is not None:
        quota = await open_quota(server.quota)
        exits.push_async_callback(quota.close)
    public = PUBLIC_PATHS
    if server.metrics.enabled and server.metrics.access == "public":
        public |= {server.metrics.path}
    auth = server.auth
    if auth is None:
        return Gatekeeper(quota=quota, route_policy=list(server.route_policy), public_paths=public)
    hash_key = await _token_hash_key(metadata)
    authenticator = build_authenticator(auth, hash_key)
    await authenticator.open()
    exits.push_async_callback(authenticator.close)
    # server.route_policy is the alias of server.auth.route_policy (the loader refuses both at once).
    return Gatekeeper(
        authenticator=authenticator,
        quota=quota,
        route_policy=list(auth.route_policy or server.route_policy),
        public_paths=public | frozenset(auth.public_paths),
        hash_key=hash_key,
    )


async def _open_inference_store(loaded: LoadedConfig, exits: contextlib.AsyncExitStack) -> InferenceStoreWriter:
    """The store behind its writer: writes never delay an answer, and reads wait for queued
    writes, so a client that reads a completion right after creating it finds it."""
    configured = loaded.run.inference_store
    assert not isinstance(configured, NoStoreConfig)  # no writer is opened for {type: none}
    config = _default_store(configured, loaded.run.name, "inference_store.db")
    store = await open_inference_store(config)
    exits.push_async_callback(store.close)
    writer = InferenceStoreWriter(store, max_queue_bytes=loaded.run.server.max_store_queue_bytes)
    exits.push_async_callback(writer.aclose)
    return writer
