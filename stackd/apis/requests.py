"""The query strings and the request bodies that no structuring type describes, as
``GET /v1/openapi.json`` shows them.

Most request bodies are described by the types that structure them (:mod:`stackd.apis.native.types`,
:mod:`stackd.apis.models`, ...); answers by :mod:`stackd.apis.responses`. What is here is read by
hand: the page queries (stackd.server.routes_*), the OpenAI bodies (checked by
:mod:`stackd.apis.openai`, passed on as sent) and the moderation body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import attrs

from stackd.apis.models import ResourceId
from stackd.convert import Check

__all__ = [
    "ChatCompletionsPageQuery",
    "MessagesPageQuery",
    "ModerationRequest",
    "OpenAIChatRequest",
    "OpenAICompletionRequest",
    "OpenAIEmbeddingsRequest",
    "ResourcePageQuery",
]

# ---- queries -----------------------------------------------------------------------------------

PageLimit = Annotated[int, Check(lambda n: 1 <= n <= 10_000, "an integer from 1 to 10000",
                                 schema={"minimum": 1, "maximum": 10_000})]
StoreLimit = Annotated[int, Check(lambda n: 1 <= n <= 1000, "an integer from 1 to 1000",
                                  schema={"minimum": 1, "maximum": 1000})]
Order = Literal["asc", "desc"]


@attrs.frozen
class ResourcePageQuery:
    """A page of models or shields (without either parameter: the whole list)."""

    limit: PageLimit | None = None
    after: ResourceId | None = None


@attrs.frozen
class ChatCompletionsPageQuery:
    after: ResourceId | None = None
    limit: StoreLimit = 20
    model: ResourceId | None = None
    order: Order = "desc"


@attrs.frozen
class MessagesPageQuery:
    after: ResourceId | None = None
    limit: StoreLimit = 20
    order: Order = "asc"


@attrs.frozen
class ModerationRequest:
    """``POST /v1/moderations``: ``model`` names a shield, or a model a shield uses."""

    input: str | list[str | dict[str, Any]]
    model: str | None = attrs.field(default=None, metadata={"doc": "default: server.default_moderation_shield"})


# ---- OpenAI requests (checked by stackd.apis.openai, passed on as sent) ----------------------------------


@attrs.frozen
class OpenAIMessage:
    """A chat message as the OpenAI API has it; every field but ``role`` is passed on as sent."""

    role: str
    content: str | list[dict[str, Any]] | None = None


Messages = Annotated[list[OpenAIMessage], Check(lambda v: len(v) >= 1, "at least one message", schema={"minItems": 1})]


@attrs.frozen
class _OpenAICommon:
    # The fields every provider relies on the type of (stackd.apis.openai._FIELD_TYPES); any
    # other field is passed on to the upstream unchanged.
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    seed: int | None = None
    top_logprobs: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, Any] | None = None
    tools: list[Any] | None = None
    stop: str | list[Any] | None = None
    user: str | None = None


@attrs.frozen
class OpenAIChatRequest(_OpenAICommon):
    """``POST /v1/chat/completions``: ``model`` is a stackd model id."""

    model: str = attrs.field(kw_only=True)
    messages: Messages = attrs.field(kw_only=True)


@attrs.frozen
class OpenAICompletionRequest(_OpenAICommon):
    """``POST /v1/completions``."""

    model: str = attrs.field(kw_only=True)
    prompt: str | list[Any] = attrs.field(kw_only=True)


Inputs = Annotated[list[str] | list[int] | list[list[int]], Check(lambda v: len(v) >= 1, "at least one input",
                                                                   schema={"minItems": 1})]


@attrs.frozen
class OpenAIEmbeddingsRequest:
    """``POST /v1/embeddings``."""

    model: str
    input: str | Inputs
    dimensions: int | None = None
    encoding_format: str | None = None
    user: str | None = None
