"""One real Gemma 3 270M provider for the whole session: loading takes about a second per model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (pip install llama-cpp-python; it compiles llama.cpp)",
)

from stackd_provider_llama_cpp import spec
from stackd_provider_llama_cpp.inference import LlamaCppInference

from stackd.convert import structure

CONFIG: dict[str, Any] = {
    "models": [
        {"model_id": "gemma3-270m", "n_ctx": 1024, "max_tokens": 16},
        {"model_id": "gemma3-270m-embed", "embedding": True, "n_ctx": 512},
    ]
}


async def _start(config: dict[str, Any]) -> LlamaCppInference:
    provider = await spec.factory(
        structure(config, spec.config_class, "$.config"), {"__provider_id__": "llama"}
    )
    assert isinstance(provider, LlamaCppInference)
    return provider


async def wait_ready(provider: LlamaCppInference, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not provider.is_ready():
            assert provider._load_error is None, provider._load_error
            await asyncio.sleep(0.02)


@pytest.fixture(scope="session")
def provider() -> Iterator[LlamaCppInference]:
    # Built on a loop of its own: the provider keeps no loop, each call uses the caller's.
    async def build() -> LlamaCppInference:
        p = await _start(CONFIG)
        await wait_ready(p)
        return p

    p = asyncio.run(build())
    yield p
    asyncio.run(p.close())
