"""Resources: models and shields, as the registry holds them and the routes show them."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["Model", "Shield", "ModelType"]

ModelType = Literal["llm", "embedding"]


@attrs.frozen
class Model:
    identifier: str
    provider_id: str
    provider_resource_id: str
    model_type: ModelType = "llm"
    metadata: dict[str, Any] = attrs.field(factory=dict)
    owner: dict[str, list[str]] | None = None
    source: Literal["config", "api"] = "api"

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "provider_resource_id": self.provider_resource_id,
            "provider_id": self.provider_id,
            "type": "model",
            "model_type": self.model_type,
            "metadata": self.metadata,
            "owner": self.owner,
        }


@attrs.frozen
class Shield:
    identifier: str
    provider_id: str
    provider_resource_id: str
    params: dict[str, Any] = attrs.field(factory=dict)
    owner: dict[str, list[str]] | None = None
    source: Literal["config", "api"] = "api"

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "provider_resource_id": self.provider_resource_id,
            "provider_id": self.provider_id,
            "type": "shield",
            "params": self.params,
            "owner": self.owner,
        }
