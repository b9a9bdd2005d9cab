"""One real Gemma 3 270M provider for the whole session: loading takes about a second per model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

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


async def wait_loaded(provider: LlamaCppInference) -> None:
    """Until loading has ended, well or badly."""
    assert provider._load_task is not None
    await asyncio.wait_for(asyncio.shield(provider._load_task), 60)


async def wait_ready(provider: LlamaCppInference) -> None:
    await wait_loaded(provider)
    assert provider.is_ready(), provider._load_error


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def provider() -> AsyncIterator[LlamaCppInference]:
    # One session loop: the workers' pipes belong to the loop that started them, so the tests
    # that share this provider run on that loop too (test_llama_cpp.py's pytestmark).
    p = await _start(CONFIG)
    await wait_ready(p)
    yield p
    await p.close()
