"""stackd provider ``inline::llama-guard``: shields that ask a Llama Guard 3 model, served by any
inference provider, whether a conversation is safe.

This module exports only :data:`spec`, the object of the ``stackd.providers`` entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackd import ProviderSpec
from stackd_provider_llama_guard.config import LlamaGuardConfig

__all__ = ["spec"]


async def create(config: LlamaGuardConfig, deps: Mapping[str, Any]) -> Any:
    from stackd_provider_llama_guard.safety import LlamaGuardSafetyProvider

    return LlamaGuardSafetyProvider(config, deps["inference"])


spec = ProviderSpec(
    contract=1,
    api="safety",
    provider_type="inline::llama-guard",
    config_class=LlamaGuardConfig,
    factory=create,
    requires=("inference",),
    description="Llama Guard 3 shields: the shield's model is called through the inference API",
)
