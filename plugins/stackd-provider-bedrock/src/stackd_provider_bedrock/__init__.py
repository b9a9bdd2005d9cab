"""stackd provider ``remote::bedrock``: shields that are Amazon Bedrock guardrails, checked with
the Bedrock runtime's ApplyGuardrail, signed with botocore's SigV4 and sent with aiohttp (no
blocking call on the event loop).

This module exports only :data:`spec`, the object of the ``stackd.providers`` entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackd import ProviderSpec
from stackd_provider_bedrock.config import BedrockConfig

__all__ = ["spec"]


async def create(config: BedrockConfig, deps: Mapping[str, Any]) -> Any:
    from stackd.upstream import limits_of
    from stackd_provider_bedrock.safety import BedrockSafetyProvider

    provider_id = str(deps.get("__provider_id__") or "bedrock")
    return await BedrockSafetyProvider.open(config, provider_id, limits_of(deps))


spec = ProviderSpec(
    contract=1,
    api="safety",
    provider_type="remote::bedrock",
    config_class=BedrockConfig,
    factory=create,
    description="Amazon Bedrock guardrails through ApplyGuardrail (shield = guardrail id, params.guardrailVersion)",
)
