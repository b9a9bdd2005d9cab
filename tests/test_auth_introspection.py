"""oauth2_token with introspection (RFC 7662) against a real endpoint on 127.0.0.1."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from stackd.testing.local_server import local_server

SECRET = "client-secret-5b2e9"
ACTIVE = "opaque-token-alice-7f3a"


@attrs.define
class Idp:
    url: str = ""
    calls: list[dict[str, str]] = attrs.field(factory=list)
    broken: bool = False


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    state = Idp()

    async def introspect(request: web.Request) -> web.Response:
        form = dict(await request.post())
        state.calls.append({k: str(v) for k, v in form.items()})
        basic = "Basic " + base64.b64encode(f"stackd:{SECRET}".encode()).decode()
        if request.headers.get("Authorization") != basic and form.get("client_secret") != SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        if state.broken:
            return web.Response(text="<html>oops</html>")
        if form.get("token") != ACTIVE:
            return web.json_response({"active": False})
        return web.json_response({"active": True, "sub": "alice", "exp": int(time.time()) + 600,
                                  "iss": "https://idp", "aud": "stackd", "groups": ["red"]})

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    async with local_server(app) as base:
        state.url = f"{base}/introspect"
        yield state


@pytest.fixture
def make_client(serve_app: Any, write_config: Callable[..., Path], idp: Idp) -> Callable[..., Any]:
    async def make(secret: str = SECRET, in_body: bool = False) -> TestClient[web.Request, web.Application]:
        server = (f"  auth:\n    provider_type: oauth2_token\n    config:\n      issuer: https://idp\n"
                  f"      audience: stackd\n      introspection:\n        url: {idp.url}\n"
                  f"        client_id: stackd\n        client_secret: {secret}\n"
                  f"        send_secret_in_body: {str(in_body).lower()}\n")
        return TestClient(await serve_app(write_config(server=server)))

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("in_body", [False, True])
async def test_active_token_is_the_caller_and_cached(make_client: Any, idp: Idp, in_body: bool) -> None:
    async with await make_client(in_body=in_body) as c:
        resp = await c.post("/v1/models", json={"model_id": "echo-2", "provider_id": "echo"}, headers=bearer(ACTIVE))
        assert resp.status == 200
        assert (await resp.json())["owner"] == {"roles": ["alice"], "teams": ["red"]}
        assert (await c.get("/v1/models", headers=bearer(ACTIVE))).status == 200
        assert len(idp.calls) == 1
        assert ("client_secret" in idp.calls[0]) is in_body


async def test_inactive_is_401_and_idp_trouble_is_503(make_client: Any, idp: Idp) -> None:
    async with await make_client() as c:
        resp = await c.get("/v1/models", headers=bearer("revoked-token"))
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert "revoked-token" not in await resp.text()
        idp.broken = True
        assert (await c.get("/v1/models", headers=bearer(ACTIVE))).status == 503
    async with await make_client(secret="wrong") as c:
        resp = await c.get("/v1/models", headers=bearer(ACTIVE))
        assert resp.status == 503 and "wrong" not in await resp.text()


def test_jwks_or_introspection_exactly_one(write_config: Callable[..., Path]) -> None:
    from stackd.config.loader import read_config

    path = write_config(server="  auth:\n    provider_type: oauth2_token\n    config: {issuer: x}\n")
    problems = [str(p) for p in read_config(path).report.problems]
    assert any("exactly one of jwks" in p and "$.server.auth.config" in p for p in problems), problems
