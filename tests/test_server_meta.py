"""Health, version, providers and inspect on the real app over a real socket (API.md §2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

import stackd
from stackd import Caller
from stackd.admission import Gatekeeper, RequestInfo
from stackd.errors import Unauthorized
from stackd.loading import load_config
from stackd.server import create_app

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
    assert echo["health"]["status"] == "OK"
    assert isinstance(echo["health"]["checked_at"], float)  # when the health was taken (cached briefly)


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


# ---- public routes stay public when every other route needs a token -------------------------------


class BearerAuth:
    """The Authenticator protocol in its simplest form: one accepted token."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def authenticate(self, request: RequestInfo) -> Caller:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise Unauthorized("a valid bearer token is required")
        return Caller(principal="alice", attributes={"roles": ("admin",)})

    async def close(self) -> None:
        return None


async def test_health_and_version_are_public_with_auth_on(echo_config: Path) -> None:
    loaded = load_config(echo_config)
    server = TestServer(create_app(loaded, gate=Gatekeeper(authenticator=BearerAuth("good-token"))),
                        host="127.0.0.1")
    await server.start_server()
    try:
        async with TestClient(server) as c:
            assert (await c.get("/v1/health")).status == 200
            assert (await c.get("/v1/version")).status == 200
            resp = await c.get("/v1/models", headers={"Authorization": "Bearer wrong-token-123"})
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "wrong-token-123" not in await resp.text()
            assert (await c.get("/v1/providers")).status == 401
            resp = await c.get("/v1/models", headers={"Authorization": "Bearer good-token"})
            assert resp.status == 200
    finally:
        await server.close()


async def test_route_policy_without_auth(serve_app: Any, write_config: Callable[..., Path]) -> None:
    path = write_config(server='  route_policy:\n  - routes: ["/v1/models"]\n    allow: {roles: [admin]}\n'
                               '  - routes: ["/v1/chat/"]\n')
    async with TestClient(await serve_app(path)) as c:
        assert (await c.get("/v1/health")).status == 200
        assert (await c.get("/v1/version")).status == 200
        resp = await c.get("/v1/models")
        assert resp.status == 403
        assert (await resp.json())["error"]["type"]
        resp = await c.post("/v1/chat/completions", json={"model": "echo-1",
                                                          "messages": [{"role": "user", "content": "x"}]})
        assert resp.status == 200
        assert (await c.get("/v1/providers")).status == 403  # deny once any rule exists


# ---- request ids ---------------------------------------------------------------------------------

async def test_every_answer_carries_a_request_id(client: Client) -> None:
    ids = set()
    for path in ("/v1/health", "/v1/models", "/v1/no-such-route"):
        resp = await client.get(path)
        rid = resp.headers["X-Request-ID"]
        assert len(rid) == 24 and int(rid, 16) >= 0
        ids.add(rid)
    assert len(ids) == 3  # made anew for each request


async def test_a_clients_request_id_is_kept_and_reaches_the_provider(client: Client) -> None:
    body = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"X-Request-ID": "trace-42.a:b", "X-LlamaStack-Provider-Data": '{"echo_request_id": true}'}
    resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.headers["X-Request-ID"] == "trace-42.a:b"
    assert (await resp.json())["choices"][0]["message"]["content"] == "hi request:trace-42.a:b"
    # Streams and errors carry it too.
    resp = await client.post("/v1/chat/completions", json={**body, "stream": True}, headers=headers)
    assert resp.headers["X-Request-ID"] == "trace-42.a:b"
    assert "request:trace-42.a:b" in await resp.text()
    resp = await client.post("/v1/chat/completions", json={"model": "nope", "messages": body["messages"]},
                             headers=headers)
    assert resp.status == 404
    assert resp.headers["X-Request-ID"] == "trace-42.a:b"


async def test_an_unfit_request_id_is_replaced(client: Client) -> None:
    for sent in ("x" * 129, "two words", 'quote"d', ""):
        resp = await client.get("/v1/models", headers={"X-Request-ID": sent})
        rid = resp.headers["X-Request-ID"]
        assert rid != sent
        assert len(rid) == 24
