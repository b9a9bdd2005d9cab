"""Health, version, providers and inspect on the real app over a real socket (API.md §2)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

import stackd

Client = TestClient[Any, Any]


async def test_health_and_version(client: Client) -> None:
    resp = await client.get("/v1/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "OK"}
    resp = await client.get("/v1/version")
    assert resp.status == 200
    assert await resp.json() == {"version": stackd.__version__}


async def test_providers_mask_secrets(client: Client, secret: str) -> None:
    resp = await client.get("/v1/providers")
    assert resp.status == 200
    text = await resp.text()
    assert secret not in text
    (echo,) = (await resp.json())["data"]
    assert echo["api"] == "inference"
    assert echo["provider_id"] == "echo"
    assert echo["provider_type"] == "inline::echo"
    assert echo["config"]["api_key"] == "********"
    # Fields that are not secret are shown as configured.
    assert echo["config"]["models"] == ["echo-1", "echo-2", "meta-llama/Llama-3.2-3B", "echo-embed"]
    assert echo["config"]["embedding_dimension"] == 8
    assert echo["health"] == {"status": "OK"}


async def test_provider_by_id(client: Client, secret: str) -> None:
    resp = await client.get("/v1/providers/echo")
    assert resp.status == 200
    text = await resp.text()
    assert secret not in text
    body = await resp.json()
    assert body["provider_id"] == "echo"
    assert body["config"]["api_key"] == "********"


async def test_unknown_provider_is_404(client: Client) -> None:
    resp = await client.get("/v1/providers/nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["type"]
    assert "nope" in body["error"]["message"]


async def test_inspect_routes(client: Client) -> None:
    resp = await client.get("/v1/inspect/routes")
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data, "no routes listed"
    for item in data:
        assert set(item) == {"route", "method", "provider_types"}
        assert item["route"].startswith("/v1/")
        assert item["method"] in {"GET", "POST", "DELETE"}
        assert isinstance(item["provider_types"], list)
    pairs = {(d["route"], d["method"]): d["provider_types"] for d in data}
    assert pairs[("/v1/chat/completions", "POST")] == ["inline::echo"]
    assert pairs[("/v1/openai/v1/chat/completions", "POST")] == ["inline::echo"]
    assert pairs[("/v1/embeddings", "POST")] == ["inline::echo"]
    assert ("/v1/models", "GET") in pairs
    assert ("/v1/models", "POST") in pairs
    assert ("/v1/health", "GET") in pairs
    # Each route is listed once per method.
    assert len(pairs) == len(data)
