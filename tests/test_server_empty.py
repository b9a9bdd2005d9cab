"""A config with no provider at all still serves the resource, meta and inspect routes."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from stackd.loading import parse_config
from stackd.server import create_app


async def test_provider_less_config_serves_the_core_routes(tmp_path: Path) -> None:
    text = f"version: 2\nimage_name: empty\napis: []\nmetadata_store: {{type: sqlite, db_path: {tmp_path}/r.db}}\n"
    async with TestClient(TestServer(create_app(parse_config(text, env={})))) as client:
        expected = {
            "/v1/health": {"status": "OK"},
            "/v1/providers": {"data": []},
            "/v1/models": {"object": "list", "data": []},
            "/v1/openai/v1/models": {"object": "list", "data": []},
            "/v1/shields": {"data": []},
        }
        for path, body in expected.items():
            resp = await client.get(path)
            assert (resp.status, await resp.json()) == (200, body), path
        routes = (await (await client.get("/v1/inspect/routes")).json())["data"]
        assert {"route": "/v1/models", "method": "GET", "provider_types": []} in routes
        assert "version" in await (await client.get("/v1/version")).json()

        # Inference needs a model, and there is none: 404, not a crash.
        resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
        assert resp.status == 404
        resp = await client.post("/v1/models", json={"model_id": "m"})
        assert resp.status == 400
        assert "no inference provider is configured" in (await resp.json())["error"]["message"]
        resp = await client.get("/v1/chat/completions")
        assert resp.status == 501
