"""The Redis kvstore's change feed (stackd/kvstore/redis.py, :class:`stackd.kvstore.ChangeFeed`):
what another store's writes announce, that a stopped watch is gone with its connection, and that
the feed comes back after the server does. Real Redis servers, nothing of stackd mocked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from stackd.kvstore import ChangeFeed
from stackd.testing.stores import RedisServer
from tests.test_kvstore_redis import _stores


class _Seen:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self._arrived = asyncio.Event()

    def __call__(self, key: str) -> None:
        self.keys.append(key)
        self._arrived.set()

    async def until(self, done: Callable[[list[str]], bool], within: float = 1.0) -> None:
        """Wait until ``done(keys)``; fail after ``within`` seconds."""
        deadline = time.monotonic() + within
        while not done(self.keys):
            left = deadline - time.monotonic()
            assert left > 0, f"only {self.keys} within {within} s"
            self._arrived.clear()
            if not done(self.keys):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)


async def _settle() -> None:
    """Long enough for a notice that would come to have come (a local server: milliseconds)."""
    await asyncio.sleep(0.2)


async def _feed_clients(raw: Any) -> int:
    """Connections of the server in subscriber mode."""
    return sum(1 for c in await raw.client_list() if "P" in c["flags"])


async def test_writes_of_another_store_are_announced_under_the_prefix(redis_server: RedisServer) -> None:
    a, b = await _stores(redis_server, 2)
    seen = _Seen()
    try:
        assert isinstance(a, ChangeFeed)
        stop = await a.watch("model:", seen)
        await b.set("model:x", "1")  # right after watch returned: never missed
        await b.set("shield:y", "1")
        await b.delete("model:x")
        await seen.until(lambda keys: len(keys) >= 2)
        await b.incr("model:counter")  # counters are not announced
        await _settle()
        assert seen.keys == ["model:x", "model:x"]

        # setdefault announces the value it stores, not one it finds
        assert await b.setdefault("model:d", "first") == "first"
        await seen.until(lambda keys: len(keys) >= 3)
        assert await b.setdefault("model:d", "second") == "first"
        await b.set("model:e", "1", expires_at=time.time() + 60)  # a marker: after it, nothing else
        await seen.until(lambda keys: keys[-1] == "model:e")
        assert seen.keys == ["model:x", "model:x", "model:d", "model:e"]

        # the writer's own watch sees its writes too (all the store's processes are told)
        own = _Seen()
        stop_own = await b.watch("model:", own)
        await b.delete("model:d")
        await own.until(lambda keys: keys == ["model:d"])
        await stop_own()
        await stop()
    finally:
        await a.close()
        await b.close()


async def test_another_namespace_is_another_feed(redis_server: RedisServer) -> None:
    (a,), (b,) = await _stores(redis_server, 1), await _stores(redis_server, 1)
    seen = _Seen()
    try:
        stop = await a.watch("", seen)
        await b.set("model:x", "1")
        await a.set("model:mine", "1")
        await seen.until(lambda keys: keys == ["model:mine"])
        await stop()
    finally:
        await a.close()
        await b.close()


async def test_watches_of_a_store_share_one_connection_and_stop_closes_it(
        redis_server: RedisServer, raw: Any) -> None:
    a, b = await _stores(redis_server, 2)
    models, shields = _Seen(), _Seen()
    try:
        before = await _feed_clients(raw)
        stop_models = await a.watch("model:", models)
        stop_shields = await a.watch("shield:", shields)
        assert await _feed_clients(raw) == before + 1
        await b.set("model:m", "1")
        await b.set("shield:s", "1")
        await models.until(lambda keys: keys == ["model:m"])
        await shields.until(lambda keys: keys == ["shield:s"])

        await stop_models()
        await stop_models()  # twice is harmless
        await b.set("model:m", "2")
        await b.set("shield:s", "2")
        await shields.until(lambda keys: keys == ["shield:s", "shield:s"])
        assert models.keys == ["model:m"]
        assert await _feed_clients(raw) == before + 1  # the shields' watch still uses it

        await stop_shields()
        await stop_shields()
        await b.set("shield:s", "3")
        await _settle()
        assert shields.keys == ["shield:s", "shield:s"]
        assert await _feed_clients(raw) == before

        # a new watch subscribes again; closing the store ends it without an unwatch
        again = _Seen()
        await a.watch("model:", again)
        assert await _feed_clients(raw) == before + 1
        await b.delete("model:m")
        await again.until(lambda keys: keys == ["model:m"])
    finally:
        await a.close()
        await b.close()
    assert await _feed_clients(raw) == before
    assert again.keys == ["model:m"]


async def test_a_failing_callback_does_not_end_the_feed(redis_server: RedisServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    a, b = await _stores(redis_server, 2)
    seen = _Seen()

    def broken(key: str) -> None:
        raise ValueError(key)

    try:
        stop_broken = await a.watch("model:", broken)
        stop = await a.watch("model:", seen)
        await b.set("model:x", "1")
        await b.set("model:y", "1")
        await seen.until(lambda keys: keys == ["model:x", "model:y"])
        assert "a change feed watcher" in caplog.text
        await stop_broken()
        await stop()
    finally:
        await a.close()
        await b.close()


async def test_the_feed_comes_back_with_the_server(own_redis_server: RedisServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stackd.kvstore")
    a, b = await _stores(own_redis_server, 2)
    seen = _Seen()
    try:
        stop = await a.watch("model:", seen)
        await b.set("model:before", "1")
        await seen.until(lambda keys: keys == ["model:before"])

        own_redis_server.stop()
        await asyncio.sleep(1.0)  # the feed notices and retries meanwhile
        own_redis_server.start()
        # Notices published while it resubscribes may be lost (documented); keep writing until
        # one arrives, then every later one does.
        deadline = time.monotonic() + 15
        while "model:probe" not in seen.keys:
            assert time.monotonic() < deadline, f"no notice after the restart: {seen.keys}"
            await b.set("model:probe", "1")
            await asyncio.sleep(0.1)
        await b.delete("model:after")
        await seen.until(lambda keys: keys[-1] == "model:after")
        await stop()
    finally:
        await a.close()
        await b.close()
    feed = [r for r in caplog.records if r.name == "stackd.kvstore"]
    warnings = [r for r in feed if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in feed]
    assert "lost its subscription" in warnings[0].getMessage()
    assert [r.getMessage() for r in feed if r.levelno == logging.INFO] == [
        f"the change feed of the Redis store redis://{own_redis_server.host}:{own_redis_server.port}/0 "
        "is receiving again"]
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text
    assert own_redis_server.password not in caplog.text


async def test_a_silent_subscription_is_pinged_and_replaced_when_no_answer_comes(
        own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stackd.kvstore.redis._IDLE_SECONDS", 0.2)  # 30 s in service
    caplog.set_level(logging.INFO, logger="stackd.kvstore")
    raw = aioredis.Redis(host=own_redis_server.host, port=own_redis_server.port,
                         password=own_redis_server.password, decode_responses=True)
    a, b = await _stores(own_redis_server, 2)
    seen = _Seen()
    try:
        stop = await a.watch("model:", seen)
        before = (await raw.info("commandstats")).get("cmdstat_ping", {}).get("calls", 0)
        await asyncio.sleep(1.0)  # idle: pinged, and the pongs come
        stats = await raw.info("commandstats")
        assert stats["cmdstat_ping"]["calls"] >= before + 2
        assert not [r for r in caplog.records if r.name == "stackd.kvstore"]
        await b.set("model:x", "1")
        await seen.until(lambda keys: keys == ["model:x"])

        # A server that takes the connection's commands but never answers (as a peer gone
        # without closing it): after one unanswered ping the feed gives up on it and subscribes anew.
        await raw.client_pause(1500, all=True)
        await asyncio.sleep(1.6)
        deadline = time.monotonic() + 10
        while "model:probe" not in seen.keys:
            assert time.monotonic() < deadline, f"no notice after the pause: {seen.keys}"
            await b.set("model:probe", "1")
            await asyncio.sleep(0.1)
        await stop()
    finally:
        await a.close()
        await b.close()
        await raw.aclose()
    messages = [r.getMessage() for r in caplog.records if r.name == "stackd.kvstore"]
    assert any("no answer to PING" in m for m in messages), messages
    assert any("is receiving again" in m for m in messages), messages
