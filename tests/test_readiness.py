"""Liveness and readiness (docs/operations.md, "Health") on live servers: readiness pings every
dependency, goes 503 when one is down and back when it returns, shares one round of checks
between concurrent probes, and fails at once when the server drains."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from stackd.loading import LoadedConfig
from stackd.server.keys import DRAINING
from stackd.server.readiness import CACHE_SECONDS
from stackd.testing.fake_openai import FakeOpenAI
from stackd.testing.local_server import local_server

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("fake-model",), chunks=4) as server:
        yield server


async def _ready(c: Client) -> tuple[int, dict[str, Any]]:
    resp = await c.get("/v1/health/ready")
    return resp.status, await resp.json()


async def _until(c: Client, status: int, seconds: float = 20.0) -> dict[str, Any]:
    """Probe until readiness answers ``status`` (the cache keeps a result for CACHE_SECONDS)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        got, body = await _ready(c)
        if got == status:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"readiness stayed {got}: {body}"
        await asyncio.sleep(0.1)


async def test_liveness_and_readiness_of_a_healthy_server(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], serve_app: Any, tmp_path: Path,
) -> None:
    server = f"  quota:\n    kvstore: {{type: sqlite, db_path: {tmp_path / 'q.db'}}}\n"
    async with TestClient(await serve_app(vllm_config(fake.url, server=server))) as c:
        resp = await c.get("/v1/health/live")
        assert resp.status == 200 and await resp.json() == {"status": "OK"}
        status, body = await _ready(c)
        assert status == 200, body
        assert body["status"] == "OK"
        assert set(body["checks"]) == {"metadata_store", "quota_store", "inference_store", "provider:vllm"}
        assert all(check["status"] == "OK" for check in body["checks"].values())
        # Probes are not counted against the quota.
        assert "X-RateLimit-Limit" not in resp.headers


async def test_readiness_follows_a_provider_down_and_back(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], serve_app: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "stackd.readiness")
    async with TestClient(await serve_app(vllm_config(fake.url))) as c:
        await _until(c, 200)
        port = int(fake.url.rsplit(":", 1)[1])
        await fake.stop()
        body = await _until(c, 503)
        assert body["status"] == "Error" and body["message"] == "not ready: provider:vllm"
        # The public answer names what failed, not why (an error's text can name hosts, files, users).
        assert body["checks"]["provider:vllm"] == {"status": "Error"}
        assert body["checks"]["metadata_store"] == {"status": "OK"}
        # The reason is logged once, and /v1/providers (authenticated) shows the same last health with it.
        failures = [r.getMessage() for r in caplog.records if "readiness: provider:vllm failed" in r.getMessage()]
        assert len(failures) == 1 and "cannot connect" in failures[0], failures
        data = (await (await c.get("/v1/providers")).json())["data"]
        assert data[0]["health"]["status"] == "Error" and "cannot connect" in data[0]["health"]["message"]
        # Liveness does not depend on anything.
        assert (await c.get("/v1/health/live")).status == 200
        fake.port = port
        await fake.start()
        await _until(c, 200)
        assert any("readiness: provider:vllm recovered" in r.getMessage() for r in caplog.records)


async def test_readiness_follows_the_quota_store_down_and_back(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], serve_app: Any, tmp_path: Path,
) -> None:
    db = tmp_path / "q.db"
    server = f"  quota:\n    kvstore: {{type: sqlite, db_path: {db}}}\n"
    async with TestClient(await serve_app(vllm_config(fake.url, server=server))) as c:
        await _until(c, 200)
        # Another process holds the file's lock past the busy timeout: the store cannot be read.
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            body = await _until(c, 503)
            assert body["checks"]["quota_store"]["status"] == "Error"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await _until(c, 200)


async def test_concurrent_probes_share_one_round_of_checks(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], serve_app: Any,
) -> None:
    async with TestClient(await serve_app(vllm_config(fake.url))) as c:
        await asyncio.sleep(CACHE_SECONDS)  # past the start's own checks
        fake.requests.clear()
        statuses = await asyncio.gather(*(c.get("/v1/health/ready") for _ in range(50)))
        assert {r.status for r in statuses} == {200}
        for _ in range(20):
            await c.get("/v1/health/ready")
        assert (await c.get("/v1/providers")).status == 200
        # vLLM's health check lists the models: once for 71 probes and a listing within the cache period.
        assert [r.path for r in fake.requests] == ["/v1/models"]


async def test_readiness_fails_at_once_when_draining(echo_config: Path, serve_app: Any) -> None:
    server = await serve_app(echo_config)
    async with TestClient(server) as c:
        assert (await _ready(c))[0] == 200
        server.app[DRAINING].set()  # what the runner does when SIGTERM starts the drain
        status, body = await _ready(c)
        assert status == 503 and body == {"status": "Error", "message": "shutting down"}
        assert (await c.get("/v1/health/live")).status == 200


async def test_the_drain_sets_draining_before_it_stops_listening(echo_config: Path) -> None:
    from stackd.loading import load_config
    from stackd.server import create_app
    from stackd.server.runner import Limits, bind, serve

    app = create_app(load_config(echo_config))
    socks = bind("127.0.0.1", 0)
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, socks, limits=Limits(shutdown_grace=1.0), announce=started.set, stop=stop))
    await asyncio.wait_for(started.wait(), 20)
    assert not app[DRAINING].is_set()
    stop.set()
    await asyncio.wait_for(task, 20)
    assert app[DRAINING].is_set()
    for sock in socks:
        sock.close()


async def test_readiness_reports_the_jwks_last_fetch(
    serve_app: Any, write_config: Callable[..., Path], caplog: pytest.LogCaptureFixture,
) -> None:
    up = {"ok": False}
    fetches = []

    async def jwks(request: web.Request) -> web.StreamResponse:
        fetches.append(request.headers.get("X-Request-ID"))
        if not up["ok"]:
            return web.json_response({"error": "down"}, status=503)
        return web.json_response({"keys": []})

    idp = web.Application()
    idp.router.add_get("/jwks", jwks)
    async with local_server(idp) as base:
        server = (f"  auth:\n    provider_type: oauth2_token\n    config:\n"
                  f"      jwks: {{uri: {base}/jwks, min_refetch_interval: 0.2}}\n"
                  "      issuer: https://idp.example\n      audience: stackd\n")
        async with TestClient(await serve_app(write_config(server=server))) as c:
            body = await _until(c, 503)
            assert body["checks"]["auth"] == {"status": "Error"}
            assert any("readiness: auth failed" in r.getMessage() and "/jwks answered HTTP 503" in r.getMessage()
                       for r in caplog.records)
            # Before any request: the probe fetches the keys, so the server can become ready.
            up["ok"] = True
            body = await _until(c, 200)
            assert body["checks"]["auth"] == {"status": "OK"}
            # Probing fetched no more often than min_refetch_interval allows (0.2 s per attempt).
            assert 1 <= len(fetches) <= 200
