"""Quota counters on Redis and PostgreSQL (and SQLite where the contract is common): exact
under concurrency across counters and `stackd serve` processes, the window from the store's
clock, fail closed while the store is down and count again once it is back. Hits of a busy key
go in batches (stackd.quota.coalesce) and stay exact: each request its own place; a failure
reaches every waiting request; one that gives up while it waits is not counted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis

from stackd.config.stores import SqliteStoreConfig, StoreConfig
from stackd.errors import UpstreamUnavailable
from stackd.quota.coalesce import CoalescingCounter
from stackd.quota.counter import Period, window_of
from stackd.quota.limiter import open_counter


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if request.param == "sqlite":
        return SqliteStoreConfig(db_path=tmp_path / "quota.db")
    unique = uuid.uuid4().hex[:12]
    server: Any = request.getfixturevalue(f"{request.param}_server")
    if request.param == "redis":
        return server.config(namespace=f"q{unique}")  # type: ignore[no-any-return]
    return server.config(table_name=f"q_{unique}")  # type: ignore[no-any-return]


async def test_concurrent_hits_over_two_counters_are_exact(store: StoreConfig) -> None:
    counters = [await open_counter(store) for _ in range(2)]
    try:
        results = await asyncio.gather(*(counters[i % 2].hit("a:1.2.3.4", "day") for i in range(400)))
        assert sorted(n for n, _ in results) == list(range(1, 401))  # never read-then-write
        assert len({reset for _, reset in results}) == 1
        assert (await counters[0].hit("a:other", "day"))[0] == 1  # callers are apart
        assert (await counters[1].hit("a:1.2.3.4", "minute"))[0] == 1  # so are periods
    finally:
        for c in counters:
            await c.close()


async def _store_now(store: StoreConfig, server: Any) -> float:
    if store.type == "redis":
        client = aioredis.Redis(host=server.host, port=server.port, password=server.password)
        try:
            seconds, micros = await client.time()
        finally:
            await client.aclose()
        return float(seconds) + micros / 1e6
    conn = await asyncpg.connect(host=server.host, port=server.port, user=server.user,
                                 password=server.password, database=server.db)
    try:
        return float(await conn.fetchval("SELECT extract(epoch FROM now())"))
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_the_window_comes_from_the_store_clock(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica whose clock is 3 days ahead counts in the store's day, not its own."""
    server: Any = request.getfixturevalue(f"{kind}_server")
    unique = uuid.uuid4().hex[:12]
    store = server.config(namespace=f"c{unique}") if kind == "redis" else server.config(table_name=f"c_{unique}")
    counter = await open_counter(store)
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3 * 86400)
        for period in ("day", "hour", "minute"):
            before = await _store_now(store, server)
            _, reset = await counter.hit("a:skewed", period)  # type: ignore[arg-type]
            after = await _store_now(store, server)
            # The window of the store's time when the hit ran (the minute may turn in between).
            assert reset in {window_of(period, before)[1], window_of(period, after)[1]}, period  # type: ignore[arg-type]
            assert reset != window_of(period, time.time())[1]  # type: ignore[arg-type]
    finally:
        await counter.close()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_store_down_fails_closed_and_counting_resumes_when_back(
    kind: str, request: pytest.FixtureRequest,
) -> None:
    server: Any = request.getfixturevalue(f"own_{kind}_server")
    counter = await open_counter(server.config())
    try:
        assert (await counter.hit("a:x", "day"))[0] == 1
        await asyncio.to_thread(server.stop)
        with pytest.raises(UpstreamUnavailable) as info:
            await counter.hit("a:x", "day")
        message = info.value.message
        assert info.value.status == 503
        assert message.startswith("the quota store ") and f"{server.host}:{server.port}" in message
        assert "cannot count this request" in message and server.password not in message
        await asyncio.to_thread(server.start)
        deadline = time.monotonic() + 30
        while True:  # a pooled connection that died with the server may fail once more
            try:
                count, _ = await counter.hit("a:x", "day")
                break
            except UpstreamUnavailable:
                assert time.monotonic() < deadline, "counting did not resume"
                await asyncio.sleep(0.2)
        # Redis here keeps nothing across a crash (no persistence); PostgreSQL keeps its rows.
        assert count == (1 if kind == "redis" else 2)
    finally:
        await counter.close()


# ---- real `stackd serve` processes ------------------------------------------------------------------


def _serve(n: int, quota_store: str, limit: int, tmp_path: Path, stackd_serve: Any, port: Callable[[], int],
           yaml_for: Callable[..., str], metadata: str | None = None) -> list[Any]:
    """``n`` processes, each with its own SQLite metadata and inference stores (unless
    ``metadata`` is given), all counting in ``quota_store``."""
    procs = []
    for i in range(n):
        state = tmp_path / f"s{i}"
        state.mkdir(exist_ok=True)
        server = (f"  quota:\n    kvstore: {quota_store}\n    anonymous_max_requests: {limit}\n")
        text = yaml_for(server=server).replace(str(tmp_path / "registry.db"), str(state / "r.db"))
        text = text.replace(str(tmp_path / "inference_store.db"), str(state / "i.db"))
        if metadata is not None:
            text = text.replace(f"metadata_store: {{type: sqlite, db_path: {state / 'r.db'}}}",
                                f"metadata_store: {metadata}")
        cfg = state / "run.yaml"
        cfg.write_text(text, encoding="utf-8")
        procs.append(stackd_serve(str(cfg), "--port", str(port())))
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_three_processes_admit_exactly_the_limit(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, stackd_serve: Any, port: Callable[[], int],
    yaml_for: Callable[..., str],
) -> None:
    """1,000 concurrent requests over 3 `stackd serve` processes on one store: exactly 100 pass."""
    server: Any = request.getfixturevalue(f"{kind}_server")
    unique = uuid.uuid4().hex[:12]
    quota_store = server.yaml(namespace=f"p{unique}") if kind == "redis" else server.yaml(table_name=f"p_{unique}")
    procs = _serve(3, quota_store, 100, tmp_path, stackd_serve, port, yaml_for)
    urls = [await asyncio.to_thread(p.wait_serving, 60) for p in procs]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as s:
        async def one(i: int) -> int:
            async with s.get(urls[i % 3] + "/v1/models") as r:
                await r.read()
                return r.status

        statuses = Tally(await asyncio.gather(*(one(i) for i in range(1000))))
        assert statuses == {200: 100, 429: 900}
        for url in urls:
            async with s.get(url + "/v1/models") as r:
                assert r.status == 429 and r.headers["X-RateLimit-Remaining"] == "0"
                assert 0 < int(r.headers["Retry-After"]) <= 86400
    for p in procs:
        assert server.password not in p.output()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_store_killed_mid_burst_is_503_then_recovers(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, stackd_serve: Any, port: Callable[[], int],
    yaml_for: Callable[..., str],
) -> None:
    server: Any = request.getfixturevalue(f"own_{kind}_server")
    (proc,) = _serve(1, server.yaml(), 100_000, tmp_path, stackd_serve, port, yaml_for)
    url = await asyncio.to_thread(proc.wait_serving, 60)
    statuses: Tally[int] = Tally()
    messages: set[str] = set()
    stop = asyncio.Event()

    async def burst(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with s.get(url + "/v1/models") as r:
                body = await r.json()
                statuses[r.status] += 1
                if r.status != 200:
                    messages.add(body["error"]["message"])

    async with aiohttp.ClientSession() as s:
        workers = [asyncio.create_task(burst(s)) for _ in range(8)]
        try:
            deadline = time.monotonic() + 30
            while statuses[200] < 50:
                assert time.monotonic() < deadline, statuses
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.stop)
            deadline = time.monotonic() + 30
            while statuses[503] < 20:
                assert time.monotonic() < deadline, statuses
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.start)
            ok_before = statuses[200]
            while statuses[200] < ok_before + 20:  # counting resumed, no restart
                assert time.monotonic() < deadline + 30, statuses
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        async with s.get(url + "/v1/models") as r:
            assert r.status == 200 and int(r.headers["X-RateLimit-Remaining"]) < 100_000
    assert set(statuses) <= {200, 503}, statuses  # never a 500, never a silent pass
    assert messages and all(m.startswith("the quota store ") and f":{server.port}/" in m for m in messages)
    assert server.password not in proc.output() and all(server.password not in m for m in messages)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_store_down_at_startup_is_a_clear_startup_error(
    kind: str, tmp_path: Path, stackd_serve: Any, port: Callable[[], int], yaml_for: Callable[..., str],
) -> None:
    dead = port()
    store = (f"{{type: redis, host: 127.0.0.1, port: {dead}, password: pw-not-shown-1234}}" if kind == "redis"
             else f"{{type: postgres, host: 127.0.0.1, port: {dead}, password: pw-not-shown-1234}}")
    (proc,) = _serve(1, store, 10, tmp_path, stackd_serve, port, yaml_for)
    assert proc.wait(timeout=60) != 0
    out = proc.output()
    assert f"127.0.0.1:{dead}" in out and "$.server.quota.kvstore.host/port" in out, out
    assert "Traceback" not in out and "pw-not-shown-1234" not in out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_the_metadata_store_on_a_shared_server_survives_a_restart(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, stackd_serve: Any, port: Callable[[], int],
    yaml_for: Callable[..., str],
) -> None:
    server: Any = request.getfixturevalue(f"{kind}_server")
    unique = uuid.uuid4().hex[:12]
    metadata = server.yaml(namespace=f"m{unique}") if kind == "redis" else server.yaml(table_name=f"m_{unique}")
    quota = str(SqliteStoreConfig(db_path=tmp_path / "quota.db").db_path)
    for attempt in range(2):
        (proc,) = _serve(1, f"{{type: sqlite, db_path: {quota}}}", 1000, tmp_path, stackd_serve, port, yaml_for,
                         metadata=metadata)
        url = await asyncio.to_thread(proc.wait_serving, 60)
        async with aiohttp.ClientSession() as s:
            if attempt == 0:
                async with s.post(url + "/v1/models", json={"model_id": "added", "provider_id": "echo",
                                                            "provider_model_id": "echo-2"}) as r:
                    assert r.status == 200, await r.text()
            async with s.get(url + "/v1/models") as r:
                ids = {m["identifier"] for m in (await r.json())["data"]}
                assert {"added", "echo-1"} <= ids
        assert proc.stop() == 0


def test_store_passwords_are_masked_in_repr_and_unstructure() -> None:
    from stackd.config.schema import RunConfig
    from stackd.convert import converter, structure

    run = structure({
        "metadata_store": {"type": "redis", "password": "redis-pw-4711"},
        "inference_store": {"type": "postgres", "password": "pg-pw-4711"},
        "server": {"quota": {"kvstore": {"type": "postgres", "password": "quota-pw-4711", "table_name": "q"}}},
    }, RunConfig)
    shown = repr(run) + repr(converter.unstructure(run))
    assert "4711" not in shown and shown.count("********") >= 6


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_wrong_password_is_a_startup_error_without_the_password(
    kind: str, request: pytest.FixtureRequest,
) -> None:
    import attrs

    from stackd.convert import Secret

    server: Any = request.getfixturevalue(f"{kind}_server")
    with pytest.raises(UpstreamUnavailable) as info:
        await open_counter(attrs.evolve(server.config(), password=Secret("wrong-pw-4711")))
    message = info.value.message
    assert message.startswith("cannot connect to the quota store ") and f"{server.host}:{server.port}" in message
    assert "$.server.quota.kvstore.host/port" in message
    assert "wrong-pw-4711" not in message and server.password not in message


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_replicas_on_one_metadata_store_serve_each_others_registrations(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, stackd_serve: Any, port: Callable[[], int],
    yaml_for: Callable[..., str],
) -> None:
    """Two replicas on one Redis/PostgreSQL metadata store: a model registered through one is served
    by the other at once (a lookup that misses reads the store), and one removed through one is
    refused by the other within the registry's cache time (docs/deployment.md)."""
    from stackd.registry import CACHE_SECONDS

    server: Any = request.getfixturevalue(f"{kind}_server")
    unique = uuid.uuid4().hex[:12]
    metadata = server.yaml(namespace=f"c{unique}") if kind == "redis" else server.yaml(table_name=f"c_{unique}")
    quota = tmp_path / "quota.db"
    one, two = _serve(2, f"{{type: sqlite, db_path: {quota}}}", 100_000, tmp_path, stackd_serve, port, yaml_for,
                      metadata=metadata)
    a, b = [await asyncio.to_thread(p.wait_serving, 60) for p in (one, two)]
    chat = {"model": "added", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(b + "/v1/chat/completions", json=chat) as r:
            assert r.status == 404  # not registered yet: B looks it up (and caches nothing)
        async with s.post(a + "/v1/models", json={"model_id": "added", "provider_id": "echo",
                                                  "provider_model_id": "echo-2"}) as r:
            assert r.status == 200, await r.text()
        async with s.post(b + "/v1/chat/completions", json=chat) as r:
            assert r.status == 200, await r.text()
        async with s.get(b + "/v1/models") as r:
            assert "added" in {m["identifier"] for m in (await r.json())["data"]}
        async with s.delete(a + "/v1/models/added") as r:
            assert r.status in (200, 204), await r.text()
        removed = time.monotonic()
        while True:
            async with s.post(b + "/v1/chat/completions", json=chat) as r:
                if r.status == 404:
                    break
                assert r.status == 200
            assert time.monotonic() - removed < CACHE_SECONDS + 1.0, "B served a removed model past the bound"
            await asyncio.sleep(0.1)
        async with s.get(b + "/v1/models") as r:
            assert "added" not in {m["identifier"] for m in (await r.json())["data"]}
    for p in (one, two):
        assert p.stop() == 0


# -- batches of a busy key (stackd.quota.coalesce) ------------------------------------------------

class _Counting:
    """A real counter, with the number of round trips it made and the sizes of its batches."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    async def hit(self, key: str, period: Period, n: int = 1) -> tuple[int, float]:
        self.calls.append(n)
        return await self.inner.hit(key, period, n)  # type: ignore[no-any-return]

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


async def test_a_burst_over_two_coalescing_counters_is_exact_in_fewer_round_trips(store: StoreConfig) -> None:
    counters = [_Counting(await open_counter(store)) for _ in range(2)]
    coalescing = [CoalescingCounter(c) for c in counters]  # type: ignore[arg-type]
    try:
        results = await asyncio.gather(*(coalescing[i % 2].hit("a:burst", "day") for i in range(600)))
        assert sorted(n for n, _ in results) == list(range(1, 601))  # each its own place: exact
        assert len({reset for _, reset in results}) == 1
        trips = sum(len(c.calls) for c in counters)
        assert sum(sum(c.calls) for c in counters) == 600 and trips < 100, [c.calls for c in counters]
        # Quiet keys and other periods are apart, and a lone hit goes at once.
        assert (await coalescing[0].hit("a:quiet", "day"))[0] == 1
        assert (await coalescing[1].hit("a:burst", "minute"))[0] == 1
    finally:
        for c in coalescing:
            await c.close()


async def test_arrival_order_is_count_order_within_a_process(store: StoreConfig) -> None:
    counter = CoalescingCounter(await open_counter(store))
    try:
        tasks = [asyncio.create_task(counter.hit("a:order", "day")) for _ in range(50)]
        results = await asyncio.gather(*tasks)
        assert [n for n, _ in results] == list(range(1, 51))
    finally:
        await counter.close()


class _Failing:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def hit(self, key: str, period: Period, n: int = 1) -> tuple[int, float]:
        await self.release.wait()
        raise UpstreamUnavailable("the quota store 'x' cannot count this request: down")

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


async def test_a_store_failure_reaches_every_request_of_the_batch() -> None:
    failing = _Failing()
    counter = CoalescingCounter(failing)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(counter.hit("a:x", "day")) for _ in range(5)]
    await asyncio.sleep(0)
    failing.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UpstreamUnavailable) for r in results), results
    assert counter._waiting == {}  # nothing left behind for the key


async def test_a_request_that_gives_up_while_it_waits_is_not_counted(store: StoreConfig) -> None:
    inner = _Counting(await open_counter(store))
    counter = CoalescingCounter(inner)  # type: ignore[arg-type]
    try:
        first = asyncio.create_task(counter.hit("a:gone", "day"))
        waiting = [asyncio.create_task(counter.hit("a:gone", "day")) for _ in range(3)]
        await asyncio.sleep(0)  # all four started: the first is out, three wait
        waiting[1].cancel()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert sorted(r[0] for r in results if isinstance(r, tuple)) == [1, 2, 3]
        assert sum(inner.calls) == 3
        assert (await counter.hit("a:gone", "day"))[0] == 4
    finally:
        await counter.close()


@pytest.mark.parametrize("n", [1, 5])
async def test_counters_add_n_at_once(store: StoreConfig, n: int) -> None:
    counter = await open_counter(store)
    try:
        assert (await counter.hit("a:n", "day", n))[0] == n
        assert (await counter.hit("a:n", "day", n))[0] == 2 * n
    finally:
        await counter.close()
