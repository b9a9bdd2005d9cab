"""stackd provider ``remote::ollama``: inference through an Ollama server's native API.

This module exports only :data:`spec`, the object of the ``stackd.providers`` entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackd import ProviderSpec
from stackd_provider_ollama.config import OllamaConfig

__all__ = ["spec"]


async def create(config: OllamaConfig, deps: Mapping[str, Any]) -> Any:
    # Imported here so that listing installed providers does not import aiohttp client code.
    from stackd.upstream import limits_of
    from stackd_provider_ollama.inference import OllamaInferenceProvider

    provider_id = str(deps.get("__provider_id__") or "ollama")
    return OllamaInferenceProvider(config, provider_id, limits_of(deps))


spec = ProviderSpec(
    contract=1,
    api="inference",
    provider_type="remote::ollama",
    config_class=OllamaConfig,
    factory=create,
    description="Models of an Ollama server (chat, completions, embeddings) through its native /api routes",
)
