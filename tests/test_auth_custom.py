"""server.auth custom: a real endpoint on 127.0.0.1 decides (API.md §4)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from stackd.testing.local_server import local_server

TOKEN = "sk-live-custom-0123456789abcdef"


@attrs.define
class Endpoint:
    answer: Any = attrs.field(factory=lambda: {"principal": "alice", "attributes": {"teams": ["a"]}})
    status: int = 200
    delay: float = 0.0
    calls: list[dict[str, Any]] = attrs.field(factory=list)
    url: str = ""


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint()

    async def decide(request: web.Request) -> web.StreamResponse:
        state.calls.append(await request.json())
        await asyncio.sleep(state.delay)
        if isinstance(state.answer, bytes):
            return web.Response(body=state.answer, status=state.status, content_type="application/json")
        return web.json_response(state.answer, status=state.status)

    app = web.Application()
    app.router.add_post("/auth", decide)
    async with local_server(app) as base:
        state.url = f"{base}/auth"
        yield state


@pytest.fixture
def make_client(serve_app: Any, write_config: Callable[..., Path], endpoint: Endpoint) -> Callable[..., Any]:
    async def make(extra: str = "", url: str | None = None) -> TestClient[web.Request, web.Application]:
        server = f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {url or endpoint.url}\n{extra}"
        return TestClient(await serve_app(write_config(server=server)))

    return make


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(c: TestClient[web.Request, web.Application], token: str = TOKEN) -> tuple[int, Any]:
    resp = await c.post("/v1/models", json={"model_id": "echo-2", "provider_id": "echo"}, headers=bearer(token))
    text = await resp.text()
    assert token not in text
    return resp.status, (await resp.json())


async def test_request_sent_and_principal_form(make_client: Any, endpoint: Endpoint) -> None:
    async with await make_client() as c:
        resp = await c.get("/v1/models?x=1&x=2", headers=bearer() | {"X-Custom": "yes"})
        assert resp.status == 200
        (call,) = endpoint.calls
        assert call["api_key"] == TOKEN
        assert call["request"]["path"] == "/v1/models"
        assert call["request"]["params"] == {"x": ["1", "2"]}
        headers = {k.lower(): v for k, v in call["request"]["headers"].items()}
        assert headers["x-custom"] == "yes" and "authorization" not in headers
        status, model = await register(c)
        assert status == 200 and model["owner"] == {"teams": ["a"]}


async def test_access_attributes_form(make_client: Any, endpoint: Endpoint) -> None:
    endpoint.answer = {"access_attributes": {"roles": ["admin"], "teams": ["ml"]}, "message": "ok"}
    async with await make_client() as c:
        status, model = await register(c)
        assert status == 200 and model["owner"] == {"roles": ["admin"], "teams": ["ml"]}


async def test_no_attributes_stand_as_a_hashed_namespace(make_client: Any, endpoint: Endpoint) -> None:
    endpoint.answer = {"access_attributes": None, "message": "ok"}
    async with await make_client() as c:
        status, model = await register(c)
        assert status == 200
        (namespace,) = model["owner"]["namespaces"]
        assert namespace.startswith("token:") and TOKEN not in namespace
        # Another token is another namespace: it does not see the first one's model.
        resp = await c.get("/v1/models/echo-2", headers=bearer("another-token"))
        assert resp.status == 404
        assert (await c.get("/v1/models/echo-2", headers=bearer())).status == 200


@pytest.mark.parametrize("answer", [b"not json", b"[1, 2]", b'{"principal": 7}', b'{"attributes": {"roles": 1}}',
                                    b'{"message": "who knows"}'])
async def test_garbage_answer_is_401_and_logged(make_client: Any, endpoint: Endpoint, answer: bytes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    endpoint.answer = answer
    async with await make_client() as c:
        resp = await c.get("/v1/models", headers=bearer())
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in await resp.text()
    assert "neither documented form" in caplog.text
    assert TOKEN not in caplog.text


async def test_non_200_is_401(make_client: Any, endpoint: Endpoint) -> None:
    endpoint.status, endpoint.answer = 403, {"message": "no"}
    async with await make_client() as c:
        resp = await c.get("/v1/models", headers=bearer())
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await c.get("/v1/models")).status == 401
        assert len(endpoint.calls) == 1


async def test_timeout_and_refused_are_503(make_client: Any, endpoint: Endpoint, port: Callable[[], int]) -> None:
    endpoint.delay = 2.0
    async with await make_client("      timeout: 0.2\n") as c:
        assert (await c.get("/v1/models", headers=bearer())).status == 503
    async with await make_client(url=f"http://127.0.0.1:{port()}/auth") as c:
        resp = await c.get("/v1/models", headers=bearer())
        assert resp.status == 503
        assert TOKEN not in await resp.text()


async def test_burst_of_1000_makes_one_call(make_client: Any, endpoint: Endpoint) -> None:
    endpoint.delay = 0.3
    async with await make_client() as c:
        async def one() -> int:
            resp = await c.get("/v1/models", headers=bearer())
            await resp.read()
            return resp.status

        results = await asyncio.gather(*(one() for _ in range(1000)))
        assert set(results) == {200}
        assert len(endpoint.calls) == 1


async def test_decisions_expire(make_client: Any, endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with await make_client("      cache_ttl: 0.1\n") as c:
        assert (await c.get("/v1/models", headers=bearer())).status == 200
        assert (await c.get("/v1/models", headers=bearer())).status == 200
        assert len(endpoint.calls) == 1
        await asyncio.sleep(0.15)
        endpoint.status = 401
        assert (await c.get("/v1/models", headers=bearer())).status == 401
        assert len(endpoint.calls) == 2
    assert TOKEN not in caplog.text


async def test_a_real_server_never_logs_the_token(
    stackd_serve: Any, write_config: Callable[..., Path], endpoint: Endpoint, port: Callable[[], int]
) -> None:
    """``stackd serve`` at DEBUG, an endpoint answering garbage, then too slowly: the tokens
    (secret-looking) appear in no answer and no line of the process's output."""
    endpoint.answer = b'{"weird": true}'
    server = (f"  port: {port()}\n  auth:\n    provider_type: custom\n    config:\n      endpoint: {endpoint.url}\n"
              "      timeout: 0.5\n")
    proc = stackd_serve(str(write_config(server=server)), env={"STACKD_LOG_LEVEL": "DEBUG"})
    url = await asyncio.to_thread(proc.wait_serving)
    tokens = ["sk-live-51HxQ2eZvKYlo2C0123456789", "ghp_0123456789abcdefABCDEF0123456789ab"]
    slow = "sk-live-another-secret-0987654321"
    async with aiohttp.ClientSession() as session:
        for token in tokens:
            async with session.get(f"{url}/v1/models", headers=bearer(token)) as resp:
                assert resp.status == 401
                assert token not in await resp.text()
        endpoint.delay = 3.0
        async with session.get(f"{url}/v1/models", headers=bearer(slow)) as resp:
            assert resp.status == 503
            assert slow not in await resp.text()
    await asyncio.to_thread(proc.stop)
    output = proc.output()
    assert "neither documented form" in output
    for token in [*tokens, slow]:
        assert token not in output
