"""Resources: models and shields, as the registry holds them and the routes show them, and the
requests that register them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import attrs

from stackd.convert import Check

__all__ = [
    "MAX_ID_CHARS",
    "Model",
    "ModelType",
    "OnFailure",
    "RegisterModelRequest",
    "RegisterShieldRequest",
    "ResourceId",
    "Shield",
    "is_resource_id",
]

ModelType = Literal["llm", "embedding"]
OnFailure = Literal["closed", "open"]

MAX_ID_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_resource_id(value: str) -> bool:
    """1 to 256 characters, no control characters, no leading or trailing whitespace.

    An id must be usable in a path (``GET /v1/models/{id}``: an empty or space-padded one could
    be registered but never fetched or deleted), in a log line and in an upstream request. ``/``
    and ``:`` are allowed: Hugging Face and Ollama names carry them.
    """
    return 0 < len(value) <= MAX_ID_CHARS and value == value.strip() and _CONTROL.search(value) is None


ResourceId = Annotated[str, Check(
    is_resource_id,
    f"an id of 1 to {MAX_ID_CHARS} characters without control characters or leading/trailing spaces",
    schema={"minLength": 1, "maxLength": MAX_ID_CHARS,
            # The lookahead spans the whole string: "$" alone would let a trailing newline through.
            "pattern": r"^(?![\s\S]*[\x00-\x1f\x7f-\x9f])\S(?:[\s\S]*\S)?$"},
)]
"""A model, shield or provider id, as requests and config files give it."""


@attrs.frozen
class Model:
    identifier: str
    provider_id: str
    provider_resource_id: str
    model_type: ModelType = "llm"
    metadata: dict[str, Any] = attrs.field(factory=dict)
    owner: dict[str, list[str]] | None = None
    source: Literal["config", "api"] = "api"
    owner_principal: str | None = None  # kept for "user is owner" rules; not part of the answer
    # Guardrails: shields run on the input and on the answer of every chat completion (docs/safety.md).
    input_shields: tuple[str, ...] = ()
    output_shields: tuple[str, ...] = ()

    @property
    def guarded(self) -> bool:
        return bool(self.input_shields or self.output_shields)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": self.identifier,
            "provider_resource_id": self.provider_resource_id,
            "provider_id": self.provider_id,
            "type": "model",
            "model_type": self.model_type,
            "metadata": self.metadata,
            "owner": self.owner,
        }
        if self.guarded:
            body["input_shields"] = list(self.input_shields)
            body["output_shields"] = list(self.output_shields)
        return body


@attrs.frozen
class Shield:
    identifier: str
    provider_id: str
    provider_resource_id: str
    params: dict[str, Any] = attrs.field(factory=dict)
    owner: dict[str, list[str]] | None = None
    source: Literal["config", "api"] = "api"
    owner_principal: str | None = None  # kept for "user is owner" rules; not part of the answer
    # As a guardrail, when its provider fails: "closed" answers 503, "open" lets the text pass (logged).
    on_failure: OnFailure = "closed"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": self.identifier,
            "provider_resource_id": self.provider_resource_id,
            "provider_id": self.provider_id,
            "type": "shield",
            "params": self.params,
            "owner": self.owner,
        }
        if self.on_failure != "closed":
            body["on_failure"] = self.on_failure
        return body


@attrs.frozen
class RegisterModelRequest:
    """``POST /v1/models``."""

    model_id: ResourceId
    provider_model_id: ResourceId | None = None
    provider_id: ResourceId | None = None
    metadata: dict[str, Any] | None = None
    model_type: ModelType = "llm"
    input_shields: list[ResourceId] | None = None
    output_shields: list[ResourceId] | None = None


@attrs.frozen
class RegisterShieldRequest:
    """``POST /v1/shields``."""

    shield_id: ResourceId
    provider_shield_id: ResourceId | None = None
    provider_id: ResourceId | None = None
    params: dict[str, Any] | None = None
    on_failure: OnFailure = "closed"
