"""The one error shape (API.md §3): 400 with errors[].loc, 404, 405, 413, never a 500 or a traceback."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]

POST_ROUTES = [
    "/v1/models",
    "/v1/shields",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/openai/v1/chat/completions",
    "/v1/openai/v1/embeddings",
    "/v1/inference/chat-completion",
    "/v1/inference/completion",
    "/v1/inference/embeddings",
    "/v1/safety/run-shield",
]


def assert_error_shape(body: Any, status: int) -> None:
    assert isinstance(body, dict) and set(body) <= {"error", "errors"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    if status == 400:
        assert body["errors"], body
        for e in body["errors"]:
            assert e["loc"].startswith("$"), e
            assert isinstance(e["msg"], str) and e["msg"]


async def test_bad_json(client: Client) -> None:
    resp = await client.post("/v1/chat/completions", data=b'{"model": "echo-1", "messages": [',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert_error_shape(body, 400)
    assert [e["loc"] for e in body["errors"]] == ["$"]
    assert "JSON" in body["error"]["message"]


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b""])
async def test_body_that_is_not_an_object(client: Client, raw: bytes) -> None:
    resp = await client.post("/v1/models", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert_error_shape(body, 400)
    assert [e["loc"] for e in body["errors"]] == ["$"]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/models", {"model_id": 12}, "$.model_id"),
        ("/v1/models", {}, "$.model_id"),
        ("/v1/models", {"model_id": "echo-2", "model_type": "vision"}, "$.model_type"),
        ("/v1/models", {"model_id": "echo-2", "metadata": [1]}, "$.metadata"),
        ("/v1/chat/completions", {"model": 5, "messages": [{"role": "user", "content": "x"}]}, "$.model"),
        ("/v1/chat/completions", {"model": "echo-1", "messages": "hello"}, "$.messages"),
        ("/v1/chat/completions", {"model": "echo-1", "messages": []}, "$.messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "$.model"),
        ("/v1/chat/completions", {"model": "echo-1", "messages": [{"role": "user", "content": "x"}],
                                  "stream": "yes"}, "$.stream"),
        ("/v1/chat/completions", {"model": "echo-1", "messages": [None]}, "$.messages[0]"),
        ("/v1/chat/completions", {"model": "echo-1", "messages": [{"role": "user", "content": "x"}],
                                  "max_tokens": "ten"}, "$.max_tokens"),
        ("/v1/chat/completions", {"model": "echo-1", "messages": [{"role": "user", "content": "x"}],
                                  "stream": True, "stream_options": "bad"}, "$.stream_options"),
        ("/v1/completions", {"model": "echo-1", "prompt": "x", "temperature": True}, "$.temperature"),
        ("/v1/completions", {"model": "echo-1", "prompt": 3}, "$.prompt"),
        ("/v1/embeddings", {"model": "echo-embed", "input": {"a": 1}}, "$.input"),
        ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": [{"role": "bot", "content": "x"}]},
         "$.messages[0].role"),
    ],
)
async def test_wrong_field_types_name_the_field(client: Client, path: str, body: dict[str, Any], loc: str) -> None:
    resp = await client.post(path, json=body)
    assert resp.status == 400, await resp.text()
    out = await resp.json()
    assert_error_shape(out, 400)
    assert loc in [e["loc"] for e in out["errors"]], out


async def test_unknown_route_is_404(client: Client) -> None:
    for method, path in (("GET", "/v1/nothing-here"), ("POST", "/v2/chat/completions"), ("GET", "/")):
        resp = await client.request(method, path)
        assert resp.status == 404
        body = await resp.json()
        assert_error_shape(body, 404)
        assert path in body["error"]["message"]


async def test_wrong_method_is_405(client: Client) -> None:
    resp = await client.put("/v1/models", json={})
    assert resp.status == 405
    body = await resp.json()
    assert_error_shape(body, 405)
    assert "PUT" in body["error"]["message"]
    assert "POST" in resp.headers["Allow"]
    resp = await client.get("/v1/chat/completions/x/y/z")
    assert resp.status in (404, 405)
    resp = await client.delete("/v1/health")
    assert resp.status == 405
    assert_error_shape(await resp.json(), 405)


async def test_body_over_the_limit_is_413(serve_app: Any, write_config: Callable[..., Path]) -> None:
    path = write_config(server="  max_body_bytes: 2048\n")
    async with TestClient(await serve_app(path)) as c:
        big = {"model": "echo-1", "messages": [{"role": "user", "content": "x" * 5000}]}
        for route in ("/v1/chat/completions", "/v1/models", "/v1/inference/chat-completion"):
            resp = await c.post(route, json=big)
            assert resp.status == 413, route
            body = await resp.json()
            assert_error_shape(body, 413)
            assert "2048" in body["error"]["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
            yield b'{"model": "echo-1", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        resp = await c.post("/v1/chat/completions", data=chunked(), headers={"Content-Type": "application/json"})
        assert resp.status == 413
        # Under the limit the same route works.
        small = {"model": "echo-1", "messages": [{"role": "user", "content": "x" * 500}]}
        assert (await c.post("/v1/chat/completions", json=small)).status == 200


GARBAGE: list[Any] = [
    {}, {"model": None}, {"model_id": None}, {"model": {"x": 1}}, {"model_id": ["a"]},
    {"model": "echo-1", "messages": [None]}, {"model": "echo-1", "messages": [{"role": 1}]},
    {"model_id": "echo-1", "messages": [{"role": "user", "content": {"type": "weird"}}]},
    {"model_id": "echo-1", "messages": [{"role": "user"}], "sampling_params": {"strategy": 3}},
    {"model": "echo-embed", "input": [1, {"a": None}]}, {"model_id": "echo-embed", "contents": 5},
    {"model": "echo-1", "prompt": ["a", 2], "stream": True}, {"model_id": "echo-1", "content": None},
    {"shield_id": None, "messages": 3}, {"model": "echo-1", "messages": [{"role": "user", "content": "x"}],
                                          "stream_options": "bad", "stream": True},
    {"model": "echo-1", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"},
]


async def test_garbage_never_gives_500_or_traceback(client: Client) -> None:
    failures = []
    for path, body in itertools.product(POST_ROUTES, GARBAGE):
        resp = await client.post(path, json=body)
        text = await resp.text()
        if resp.status >= 500 and resp.status != 501:
            failures.append((path, body, resp.status, text))
        assert "Traceback" not in text and 'File "' not in text, (path, body, text)
        if resp.status >= 400:
            assert_error_shape(await resp.json(), resp.status)
    assert not failures, "\n".join(map(repr, failures))
