"""The Redis metadata store's change feed across processes: two real ``stackd serve`` replicas on
one Redis (a throwaway redis-server, as every Redis test starts), with the same config but the
port. A model removed or registered again through one is seen by the other within milliseconds,
not when its cached copy ages out (:data:`stackd.registry.CACHE_SECONDS`, docs/deployment.md).

Before each change the other replica reads the model, so it holds a fresh copy: without the feed
it would serve that copy for up to CACHE_SECONDS and these tests would fail (the first shows that
it does, for a record deleted without a notice). The feed in one process:
test_kvstore_redis_feed.py and test_registry_coherence.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from stackd.registry import CACHE_SECONDS
from stackd.testing.stores import RedisServer

pytestmark = pytest.mark.slow

# The feed delivers in milliseconds on a local Redis; a copy without it lives up to CACHE_SECONDS.
WITHIN = 0.5
POLL = 0.02
# Long enough for the notice of a write to have reached every replica (milliseconds here), so the
# read that follows is cached rather than dropped by that notice.
SETTLE = 0.2


@attrs.frozen
class Replicas:
    a: str
    b: str
    namespace: str
    http: aiohttp.ClientSession


@pytest.fixture
async def replicas(redis_server: RedisServer, stackd_serve: Any, port: Callable[[], int],
                   yaml_for: Callable[..., str], tmp_path: Path) -> AsyncIterator[Replicas]:
    """Two ``stackd serve`` processes of one config file, its metadata store a namespace of this
    test on the session's Redis; the password comes from the environment, as docs/deployment.md
    configures it, so it is in no file of the test's."""
    namespace = f"feed{uuid.uuid4().hex[:12]}"
    store = redis_server.yaml(namespace=namespace, password='"${env.REDIS_PASSWORD}"')
    text = yaml_for()
    # No stored completions (none are made here): two processes would otherwise share one SQLite file.
    for old, new in ((f"metadata_store: {{type: sqlite, db_path: {tmp_path / 'registry.db'}}}",
                      f"metadata_store: {store}"),
                     (f"inference_store: {{type: sqlite, db_path: {tmp_path / 'inference_store.db'}}}",
                      "inference_store: {type: none}")):
        assert old in text, f"echo_yaml no longer writes {old!r}; update this test's config"
        text = text.replace(old, new)
    config = tmp_path / "replicas.yaml"
    config.write_text(text, encoding="utf-8")
    env = {"REDIS_PASSWORD": redis_server.password}
    procs = [stackd_serve(str(config), "--port", str(port()), env=env) for _ in range(2)]
    a, b = await asyncio.gather(*(asyncio.to_thread(p.wait_serving, 30) for p in procs))
    async with aiohttp.ClientSession() as http:
        yield Replicas(a, b, namespace, http)
    for p in procs:
        assert p.stop() == 0, f"a replica should stop cleanly on SIGTERM:\n{p.output()}"
        assert redis_server.password not in p.output(), "the Redis password should never be printed"


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as r:
        return r.status, await r.json()


async def _register(r: Replicas, base: str, body: dict[str, Any]) -> None:
    async with r.http.post(f"{base}/v1/models", json=body) as resp:
        assert resp.status == 200, f"POST /v1/models {body} should register it: {resp.status} {await resp.text()}"


async def _until(what: str, done: Callable[[], Awaitable[bool]], began: float) -> None:
    """Poll ``done`` every POLL seconds until it is true; fail if that is not within WITHIN
    seconds of ``began`` (when the change was sent)."""

    def late() -> str:
        return (f"{what} within {WITHIN} s of the change (the change feed's delivery; without it the cached "
                f"copy lives up to {CACHE_SECONDS} s), still not after {time.monotonic() - began:.3f} s")

    while not await done():
        assert time.monotonic() - began < WITHIN, late()
        await asyncio.sleep(POLL)
    assert time.monotonic() - began < WITHIN, late()


async def test_a_model_removed_through_one_replica_is_refused_by_the_other_at_once(
        replicas: Replicas, raw: Any) -> None:
    r = replicas
    for model_id in ("team/feed", "feed-quiet"):
        await _register(r, r.a, {"model_id": model_id, "provider_model_id": "echo-2"})
        status, body = await _get(r.http, f"{r.b}/v1/models/{model_id}")
        assert status == 200, f"B should find {model_id} registered through A (a miss reads the store): {body}"
        assert body["provider_resource_id"] == "echo-2", f"B should serve A's record: {body}"

    await asyncio.sleep(SETTLE)
    began = time.monotonic()
    for model_id in ("team/feed", "feed-quiet"):  # B's copies, fresh for CACHE_SECONDS
        status, _ = await _get(r.http, f"{r.b}/v1/models/{model_id}")
        assert status == 200, f"B should still serve {model_id} right before it is removed"

    # What the removal below would meet without the feed: a record deleted behind stackd's back
    # makes no notice, and B serves its copy.
    assert await raw.delete(f"{r.namespace}:model:feed-quiet") == 1, "the record should be where the store keeps it"
    status, body = await _get(r.http, f"{r.b}/v1/models/feed-quiet")
    elapsed = time.monotonic() - began
    assert elapsed < CACHE_SECONDS, f"too slow to tell: B's copy may have aged out ({elapsed:.3f} s)"
    assert status == 200, f"B should serve its cached copy of a record deleted without a notice: {status} {body}"

    removed = time.monotonic()
    async with r.http.delete(f"{r.a}/v1/models/team/feed") as resp:
        assert resp.status == 200, f"DELETE through A should remove the model: {resp.status} {await resp.text()}"

    async def refused() -> bool:
        status, _ = await _get(r.http, f"{r.b}/v1/models/team/feed")
        assert status in (200, 404), f"B should answer 200 (its copy) or 404 (gone), not {status}"
        return status == 404

    await _until("B should answer 404 for the model A removed", refused, removed)
    status, body = await _get(r.http, f"{r.b}/v1/models")
    assert not {"team/feed", "feed-quiet"} & {m["identifier"] for m in body["data"]}, \
        f"B's list should read the store, which holds neither model now: {body}"


async def test_a_model_registered_again_through_one_replica_is_read_anew_by_the_other(replicas: Replicas) -> None:
    r = replicas  # the other way round: changed through B, seen by A
    await _register(r, r.b, {"model_id": "feed-alias", "provider_model_id": "echo-1"})
    status, body = await _get(r.http, f"{r.a}/v1/models/feed-alias")
    assert (status, body.get("provider_resource_id")) == (200, "echo-1"), f"A should find B's registration: {body}"

    await asyncio.sleep(SETTLE)
    status, body = await _get(r.http, f"{r.a}/v1/models/feed-alias")  # A's copy of echo-1
    assert (status, body.get("provider_resource_id")) == (200, "echo-1"), f"A should serve echo-1 before: {body}"
    changed = time.monotonic()
    await _register(r, r.b, {"model_id": "feed-alias", "provider_model_id": "echo-2"})  # same provider: an update

    async def updated() -> bool:
        status, body = await _get(r.http, f"{r.a}/v1/models/feed-alias")
        assert status == 200, f"A should keep serving the model while it is registered again: {status} {body}"
        return bool(body["provider_resource_id"] == "echo-2")

    await _until("A should serve the record B registered again (provider_resource_id echo-2)", updated, changed)
