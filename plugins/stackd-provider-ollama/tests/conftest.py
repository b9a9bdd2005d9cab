"""Fixtures: a fake Ollama on 127.0.0.1:0 and a provider built through the plugin's entry point."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from stackd_provider_ollama.fake import FakeOllama

from stackd import CallContext, ProviderSpec
from stackd.convert import structure


def load_spec() -> ProviderSpec:
    (ep,) = [e for e in entry_points(group="stackd.providers") if e.name == "remote::ollama"]
    spec = ep.load()
    assert isinstance(spec, ProviderSpec)
    return spec


async def make_provider(config: dict[str, Any], provider_id: str = "ollama-test") -> Any:
    spec = load_spec()
    cfg = structure(config, spec.config_class, "$.providers.inference[0].config", what="config")
    return await spec.factory(cfg, {"__provider_id__": provider_id})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOllama) -> AsyncIterator[Any]:
    prov = await make_provider({"url": fake.url, "timeout": 5})
    yield prov
    await prov.close()


@pytest.fixture
def ctx() -> CallContext:
    return CallContext(provider_data={"api_key": "never-stored"}, request_id="req-1")


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def collect(stream: Any) -> list[dict[str, Any]]:
    out = []
    try:
        async for chunk in stream:
            out.append(chunk)
    finally:
        await stream.aclose()
    return out
