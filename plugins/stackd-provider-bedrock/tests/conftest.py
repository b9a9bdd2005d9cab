"""Fixtures: the Bedrock stand-in (SigV4 checked, a small policy) and a stackd app with a
remote::bedrock shield in front of it; inline::echo (the test plugin) as the chat model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from stackd_provider_bedrock.fake import FakeBedrock, Guardrail

from stackd.loading import parse_config
from stackd.server import create_app

POLICY = Guardrail(
    blocked_words=("bomb",),
    denied_topics={"Investment advice": ("stocks", "shares")},
    content_filters={"VIOLENCE": ("kill",)},
)


def bedrock_yaml(url: str, state: Path, *, secret: str | None = "fake-secret", config: str = "", chat: str = "",
                 extra: str = "") -> str:
    """``secret=None``: no keys in the config (the default credential chain)."""
    keys = f"      aws_access_key_id: AKIDFAKE\n      aws_secret_access_key: {secret}\n" if secret else ""
    return f"""\
apis: [inference, safety]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
  safety:
  - provider_id: bedrock
    provider_type: remote::bedrock
    config:
{keys}      region_name: us-east-1
      endpoint_url: {url}
      timeout: 5
      retries: 1
{config}metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: chat
  provider_id: echo
  provider_model_id: echo-1
{chat}shields:
- shield_id: content-guard
  provider_id: bedrock
  provider_shield_id: gr-1
  params: {{guardrailVersion: "1"}}
{extra}"""


@pytest.fixture
async def bedrock() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock({"gr-1": POLICY}) as fake:
        yield fake


Connect = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]


@pytest.fixture
async def connect(bedrock: FakeBedrock, tmp_path: Path) -> AsyncIterator[Connect]:
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def make(**kw: Any) -> TestClient:  # type: ignore[type-arg]
        loaded = parse_config(bedrock_yaml(bedrock.url, tmp_path, **kw), env={})
        client = TestClient(TestServer(create_app(loaded), host="127.0.0.1"))
        try:
            await client.start_server()
        except BaseException:
            await client.close()
            raise
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        await client.close()
