"""server.quota on SQLite (API.md §5): exact under concurrency across processes, counted after
authentication, X-RateLimit-* on every counted answer, fail closed and recover."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from stackd.testing.local_server import local_server

CHAT = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}


def quota_server(db: Path, limit: int = 100, extra: str = "") -> str:
    return (f"  quota:\n    kvstore: {{type: sqlite, db_path: {db}}}\n"
            f"    anonymous_max_requests: {limit}\n{extra}")


async def test_two_processes_admit_exactly_the_limit(
    tmp_path: Path, stackd_serve: Any, port: Callable[[], int], yaml_for: Callable[..., str],
) -> None:
    """1,000 concurrent requests over 2 `stackd serve` processes sharing one quota file: exactly 100 pass."""
    quota_db = tmp_path / "shared" / "quota.db"
    urls = []
    procs = []
    for i in range(2):
        state = tmp_path / f"s{i}"
        state.mkdir()
        text = yaml_for(server=quota_server(quota_db)).replace(str(tmp_path / "registry.db"), str(state / "r.db"))
        text = text.replace(str(tmp_path / "inference_store.db"), str(state / "i.db"))
        cfg = state / "run.yaml"
        cfg.write_text(text, encoding="utf-8")
        p = port()
        procs.append(stackd_serve(str(cfg), "--port", str(p)))
        urls.append(f"http://127.0.0.1:{p}")
    for proc in procs:
        await asyncio.to_thread(proc.wait_serving)
    conn = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one(i: int) -> int:
            async with s.get(urls[i % 2] + "/v1/models") as r:
                await r.read()
                return r.status
        statuses = Counter(await asyncio.gather(*(one(i) for i in range(1000))))
        assert statuses == {200: 100, 429: 900}
        async with s.get(urls[0] + "/v1/models") as r:
            body = await r.json()
            assert r.status == 429
            assert body["error"]["message"] == "Quota exceeded"
            assert r.headers["X-RateLimit-Limit"] == "100" and r.headers["X-RateLimit-Remaining"] == "0"
            assert int(r.headers["Retry-After"]) > 0 and r.headers["Retry-After"] == r.headers["X-RateLimit-Reset"]
        async with s.get(urls[1] + "/v1/health") as r:  # public paths are not counted
            assert r.status == 200 and "X-RateLimit-Limit" not in r.headers


@pytest.fixture
async def quota_client(serve_app: Any, write_config: Callable[..., Path], tmp_path: Path
                       ) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    server = await serve_app(write_config(server=quota_server(tmp_path / "quota.db", limit=5)))
    async with TestClient(server) as c:
        yield c


async def test_headers_on_stream_json_and_errors(quota_client: TestClient[web.Request, web.Application]) -> None:
    c = quota_client
    resp = await c.post("/v1/chat/completions", json=CHAT | {"stream": True})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    await resp.read()
    assert resp.headers["X-RateLimit-Limit"] == "5" and resp.headers["X-RateLimit-Remaining"] == "4"
    resp = await c.get("/v1/models/no-such-model")
    assert resp.status == 404 and resp.headers["X-RateLimit-Remaining"] == "3"
    resp = await c.post("/v1/chat/completions", json={"model": 1})
    assert resp.status == 400 and resp.headers["X-RateLimit-Remaining"] == "2"
    resp = await c.get("/v1/models")
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "1"
    assert 0 < int(resp.headers["X-RateLimit-Reset"]) <= 86400


async def test_store_unavailable_fails_closed_then_recovers(
    quota_client: TestClient[web.Request, web.Application], tmp_path: Path,
) -> None:
    c = quota_client
    assert (await c.get("/v1/models")).status == 200
    # Another process holds the file's write lock past the busy timeout: the store is unavailable.
    holder = sqlite3.connect(tmp_path / "quota.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        resp = await c.get("/v1/models")
        body = await resp.json()
        message = body["error"]["message"]
        assert resp.status == 503
        assert "the quota store" in message and "quota.db" in message and "Quota exceeded" not in message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    resp = await c.get("/v1/models")
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "3"


async def test_401_costs_nothing_and_principal_has_its_own_limit(
    serve_app: Any, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    async def decide(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["api_key"] != "good-token":
            return web.json_response({"message": "no"}, status=401)
        return web.json_response({"principal": "alice", "attributes": {"teams": ["a"]}})

    app = web.Application()
    app.router.add_post("/auth", decide)
    async with local_server(app) as base:
        url = f"{base}/auth"
        server = (f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {url}\n"
                  + quota_server(tmp_path / "quota.db", limit=1, extra="    authenticated_max_requests: 3\n"))
        async with TestClient(await serve_app(write_config(server=server))) as c:
            for _ in range(5):
                resp = await c.get("/v1/models", headers={"Authorization": "Bearer bad-token"})
                assert resp.status == 401 and "X-RateLimit-Limit" not in resp.headers
            good = {"Authorization": "Bearer good-token"}
            statuses = [(await c.get("/v1/models", headers=good)).status for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
    keys = [row[0] for row in sqlite3.connect(tmp_path / "quota.db").execute("SELECT key FROM quota_counters")]
    assert len(keys) == 1 and "alice" not in keys[0] and "good-token" not in keys[0]


def test_config_checks(run_cli: Any, write_config: Callable[..., Path], tmp_path: Path) -> None:
    redis = write_config(server="  quota:\n    kvstore: {type: redis, namespace: 'a b'}\n", name="redis.yaml")
    out = run_cli("validate", str(redis))
    assert out.returncode != 0 and "invalid namespace 'a b'" in out.stdout + out.stderr
    assert "$.server.quota.kvstore.namespace" in out.stdout + out.stderr
    warn = write_config(server=quota_server(tmp_path / "q.db", extra="    authenticated_max_requests: 5\n"),
                        name="warn.yaml")
    out = run_cli("validate", str(warn))
    assert out.returncode == 0 and "without server.auth" in out.stdout + out.stderr
    moved = write_config(server=quota_server(tmp_path / "q.db", extra="    trusted_proxies: [10.0.0.1]\n"),
                         name="moved.yaml")
    out = run_cli("validate", str(moved))
    assert "it moved: server.trusted_proxies" in out.stdout + out.stderr
    same = write_config(server=quota_server(tmp_path / "registry.db"), name="same.yaml")
    out = run_cli("validate", str(same))
    assert out.returncode != 0 and "another file than the metadata store" in out.stdout + out.stderr


def test_store_that_cannot_open_is_a_startup_error(
    stackd_serve: Any, write_config: Callable[..., Path], tmp_path: Path, port: Callable[[], int],
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    cfg = write_config(server=quota_server(blocker / "quota.db"))
    proc = stackd_serve(str(cfg), "--port", str(port()))
    assert proc.wait() != 0
    assert "quota.db" in proc.output() and "Traceback" not in proc.output()


async def test_a_route_policy_403_is_counted_and_carries_the_headers(
    serve_app: Any, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    server = quota_server(tmp_path / "quota.db", limit=5) + (
        "  route_policy:\n  - routes: [/v1/models]\n    allow: {roles: [admin]}\n")
    async with TestClient(await serve_app(write_config(server=server))) as c:
        resp = await c.get("/v1/models")
        assert resp.status == 403 and resp.headers["X-RateLimit-Remaining"] == "4"
