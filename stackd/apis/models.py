"""Resources: models and shields, as the registry holds them and the routes show them, and the
requests that register them."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["Model", "ModelType", "RegisterModelRequest", "RegisterShieldRequest", "Shield"]

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


@attrs.frozen
class RegisterModelRequest:
    """``POST /v1/models``."""

    model_id: str
    provider_model_id: str | None = None
    provider_id: str | None = None
    metadata: dict[str, Any] | None = None
    model_type: ModelType = "llm"


@attrs.frozen
class RegisterShieldRequest:
    """``POST /v1/shields``."""

    shield_id: str
    provider_shield_id: str | None = None
    provider_id: str | None = None
    params: dict[str, Any] | None = None
