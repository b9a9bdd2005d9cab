"""remote::ollama served by stackd: both clients' routes, a model that is not pulled, failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from stackd_provider_ollama.fake import FakeOllama

from stackd.loading import parse_config
from stackd.server import create_app


def _config(url: str, state: Path) -> str:
    return f"""\
apis: [inference]
providers:
  inference:
  - provider_id: ollama
    provider_type: remote::ollama
    config: {{url: "{url}", timeout: 2}}
metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: llama3.2
- model_id: all-minilm
  model_type: embedding
  metadata: {{embedding_dimension: 8}}
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as upstream:
        yield upstream


@pytest.fixture
async def client(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    loaded = parse_config(_config(fake.url, tmp_path), env={})
    async with TestClient(TestServer(create_app(loaded))) as c:
        yield c


async def test_openai_chat_and_stream(client: TestClient[Any, Any]) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue?"}], "max_tokens": 4}
    answer = await (await client.post("/v1/chat/completions", json=body)).json()
    assert answer["model"] == "llama3.2"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 4

    raw = await (await client.post("/v1/chat/completions", json={**body, "stream": True})).read()
    frames = [f[6:] for f in raw.split(b"\n\n") if f.startswith(b"data: ")]
    assert frames[-1] == b"[DONE]"
    chunks = [orjson.loads(f) for f in frames[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_native_routes(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/inference/chat-completion", json={
        "model_id": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    body = await resp.json()
    assert body["completion_message"]["content"] == "The sky is blue because of Rayleigh scattering."
    assert body["completion_message"]["stop_reason"] == "end_of_turn"
    resp = await client.post("/v1/inference/embeddings", json={"model_id": "all-minilm", "contents": ["a", "b"]})
    assert [len(v) for v in (await resp.json())["embeddings"]] == [8, 8]


async def test_a_model_that_is_not_pulled_names_the_pull_command(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/models", json={"model_id": "qwen3:8b"})
    assert resp.status == 404
    assert "ollama pull qwen3:8b" in (await resp.json())["error"]["message"]


async def test_a_stream_error_line_becomes_one_error_frame(client: TestClient[Any, Any], fake: FakeOllama) -> None:
    fake.error_after = 2
    raw = await (await client.post("/v1/chat/completions", json={
        "model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]})).read()
    frames = [f[6:] for f in raw.split(b"\n\n") if f.startswith(b"data: ")]
    assert b"[DONE]" not in frames
    assert "an error was encountered" in orjson.loads(frames[-1])["error"]["message"]
