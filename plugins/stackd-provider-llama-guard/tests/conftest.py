"""Fixtures: the seed's Llama Guard case with two fake vLLM servers (one serves the chat model,
the other the guard model), behind remote::vllm, and a real stackd app in front."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stackd.loading import parse_config
from stackd.server import create_app
from stackd.testing.fake_openai import FakeOpenAI, llama_guard

GUARD = "meta-llama/Llama-Guard-3-1B"
# The fake guard's policy: a word in the last turn, and the categories it violates.
POLICY = {"bomb": "S1,S9", "steal": "S2", "election": "S13"}


def guard_yaml(chat_url: str, guard_url: str, state: Path, *, config: str = "{}", extra: str = "",
               chat: str = "", shield: str = "", shields: bool = True) -> str:
    """``chat``/``shield``: more YAML lines (indented) for the chat model's and the shield's entries."""
    return f"""\
apis: [inference, safety]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{chat_url}/v1", timeout: 5}}
  - provider_id: vllm-guard
    provider_type: remote::vllm
    config: {{url: "{guard_url}/v1", timeout: 5}}
  safety:
  - provider_id: llama-guard
    provider_type: inline::llama-guard
    config: {config}
metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: chat
  provider_id: vllm
  provider_model_id: fake-model
{chat}- model_id: {GUARD}
  provider_id: vllm-guard
""" + (f"""shields:
- shield_id: {GUARD}
  provider_id: llama-guard
{shield}""" if shields else "") + extra


@pytest.fixture
async def chat_upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("fake-model",), chunks=8) as server:
        yield server


@pytest.fixture
async def guard_upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=(GUARD,), reply=llama_guard(POLICY)) as server:
        yield server


Connect = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]


@pytest.fixture
async def connect(
    chat_upstream: FakeOpenAI, guard_upstream: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Connect]:
    """``await connect(config="{...}", extra="...")``: a client of the app serving :func:`guard_yaml`."""
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def make(**kw: Any) -> TestClient:  # type: ignore[type-arg]
        loaded = parse_config(guard_yaml(chat_upstream.url, guard_upstream.url, tmp_path, **kw), env={})
        client = TestClient(TestServer(create_app(loaded), host="127.0.0.1"))
        try:
            await client.start_server()
        except BaseException:
            await client.close()  # its session was opened before the app failed to start
            raise
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        await client.close()
