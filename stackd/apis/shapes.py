"""The shapes of answers and query strings, as ``GET /v1/openapi.json`` shows them.

Request bodies are described by the types that structure them (:mod:`stackd.apis.native.types`,
:mod:`stackd.apis.models`, ...). Answers are built as plain dicts on the hot path, so their
shapes are declared here once, as attrs classes; tests/test_openapi_fuzz.py holds every answer
of a live server to them (schemathesis), so a shape that drifts from what the routes send fails
there. Upstream answers passed through (the OpenAI routes) list the fields stackd relies on
and allow any other.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import attrs

from stackd.apis.models import MAX_ID_CHARS, ModelType, OnFailure, ResourceId
from stackd.apis.native.types import StopReason
from stackd.convert import Check

__all__ = [
    "ChatCompletionsPageQuery",
    "ErrorBody",
    "MessagesPageQuery",
    "ModelAnswer",
    "ModelList",
    "NativeChatResponse",
    "NativeChatStreamChunk",
    "NativeCompletionResponse",
    "NativeCompletionStreamChunk",
    "NativeEmbeddingsResponse",
    "OpenAIAnswer",
    "ReadinessAnswer",
    "OpenAIChatCompletion",
    "OpenAICompletion",
    "OpenAIEmbeddings",
    "ResourcePageQuery",
    "RunShieldResponse",
    "ShieldAnswer",
    "ShieldList",
    "StoredCompletionList",
    "StoredMessageList",
]

# ---- errors ----------------------------------------------------------------------------------


@attrs.frozen
class FieldErrorBody:
    loc: str = attrs.field(metadata={"doc": "where: a $.path into the request ($.query.x, $.headers.X for those)"})
    msg: str


@attrs.frozen
class ErrorDetail:
    message: str
    type: str


@attrs.frozen
class ErrorBody:
    """Every error: its message and kind; a 400 also lists each problem with its place."""

    error: ErrorDetail
    errors: list[FieldErrorBody] | None = None


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


# ---- meta ---------------------------------------------------------------------------------------


@attrs.frozen
class HealthAnswer:
    status: Literal["OK", "Error"]
    message: str | None = None


@attrs.frozen
class ReadinessAnswer:
    status: Literal["OK", "Error"]
    checks: dict[str, dict[str, Any]] | None = attrs.field(
        default=None, metadata={"doc": "each dependency (metadata_store, quota_store, inference_store, "
                                       "provider:<id>, jwks): its status, message and latency"})
    message: str | None = None


@attrs.frozen
class VersionAnswer:
    version: str


@attrs.frozen
class ProviderHealth:
    status: str
    message: str | None = None
    checked_at: float | None = attrs.field(default=None, metadata={"doc": "when it was checked (Unix time)"})


@attrs.frozen
class ProviderInfo:
    api: str
    provider_id: str
    provider_type: str
    config: dict[str, Any] = attrs.field(metadata={"doc": "the provider's settings; secrets read ********"})
    health: ProviderHealth


@attrs.frozen
class ProviderList:
    data: list[ProviderInfo]


@attrs.frozen
class RouteInfo:
    route: str
    method: str
    provider_types: list[str]


@attrs.frozen
class RouteList:
    data: list[RouteInfo]


# ---- resources ------------------------------------------------------------------------------------

Owner = dict[str, list[str]] | None
Id = Annotated[str, Check(lambda s: 0 < len(s) <= MAX_ID_CHARS, "an id",
                          schema={"minLength": 1, "maxLength": MAX_ID_CHARS})]


@attrs.frozen
class ModelAnswer:
    """A model, with Llama Stack's fields and OpenAI's side by side."""

    identifier: Id
    provider_resource_id: Id
    provider_id: Id
    type: Literal["model"]
    model_type: ModelType
    metadata: dict[str, Any]
    owner: Owner
    id: Id
    object: Literal["model"]
    created: int
    owned_by: str
    input_shields: list[str] | None = None
    output_shields: list[str] | None = None


@attrs.frozen
class ModelList:
    object: Literal["list"]
    data: list[ModelAnswer]
    has_more: bool | None = attrs.field(default=None, metadata={"doc": "only when paged (limit or after)"})


@attrs.frozen
class ShieldAnswer:
    identifier: Id
    provider_resource_id: Id
    provider_id: Id
    type: Literal["shield"]
    params: dict[str, Any]
    owner: Owner
    on_failure: OnFailure | None = None


@attrs.frozen
class ShieldList:
    data: list[ShieldAnswer]
    has_more: bool | None = attrs.field(default=None, metadata={"doc": "only when paged (limit or after)"})


# ---- Llama Stack native inference and safety ----------------------------------------------------------


@attrs.frozen
class Metric:
    metric: str
    value: float
    unit: str | None


@attrs.frozen
class TokenLogprobs:
    logprobs_by_token: dict[str, float | None]


@attrs.frozen
class ToolCallAnswer:
    call_id: str
    tool_name: str
    arguments: str | dict[str, Any]
    arguments_json: str | None


@attrs.frozen
class CompletionMessage:
    role: Literal["assistant"]
    content: str
    stop_reason: StopReason
    tool_calls: list[ToolCallAnswer]


@attrs.frozen
class Violation:
    violation_level: Literal["info", "warn", "error"]
    user_message: str | None
    metadata: dict[str, Any]


@attrs.frozen
class NativeChatResponse:
    completion_message: CompletionMessage
    logprobs: list[TokenLogprobs] | None
    metrics: list[Metric] | None
    violation: Violation | None = attrs.field(default=None, metadata={"doc": "when a guardrail answered"})


@attrs.frozen
class NativeCompletionResponse:
    content: str
    stop_reason: StopReason
    logprobs: list[TokenLogprobs] | None
    metrics: list[Metric] | None


@attrs.frozen
class NativeEmbeddingsResponse:
    embeddings: list[list[float]]


@attrs.frozen
class StreamError:
    """The last event of a stream that failed after it began (or was ended by a shutdown)."""

    error: ErrorDetail


@attrs.frozen
class ChatStreamEvent:
    event_type: Literal["start", "progress", "complete"]
    delta: dict[str, Any]
    logprobs: list[TokenLogprobs] | None = None
    stop_reason: StopReason | None = None


@attrs.frozen
class ChatStreamEventBody:
    event: ChatStreamEvent
    metrics: list[Metric] | None = None


NativeChatStreamChunk = ChatStreamEventBody | StreamError


@attrs.frozen
class CompletionStreamEventBody:
    delta: str
    stop_reason: StopReason | None = None
    logprobs: list[TokenLogprobs] | None = None
    metrics: list[Metric] | None = None


NativeCompletionStreamChunk = CompletionStreamEventBody | StreamError


@attrs.frozen
class RunShieldResponse:
    violation: Violation | None


# ---- OpenAI (upstream answers passed through) ----------------------------------------------------------


@attrs.frozen
class OpenAIAnswer:
    """A ``chat.completion``, ``chat.completion.chunk`` or ``text_completion`` as the upstream
    answered it (only ``model`` is stackd's): the fields clients rely on, and any other."""

    id: str
    object: str
    choices: list[dict[str, Any]]
    created: int | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None


OpenAIChatCompletion = OpenAICompletion = OpenAIAnswer
OpenAIChatStreamChunk = OpenAICompletionStreamChunk = OpenAIAnswer | StreamError


@attrs.frozen
class EmbeddingItem:
    embedding: list[float] | str
    index: int
    object: str | None = None


@attrs.frozen
class OpenAIEmbeddings:
    object: str
    data: list[EmbeddingItem]
    model: str | None = None
    usage: dict[str, Any] | None = None


@attrs.frozen
class StoredCompletionList:
    object: Literal["list"]
    data: list[dict[str, Any]] = attrs.field(metadata={"doc": "chat.completion bodies with their input_messages"})
    has_more: bool
    first_id: str
    last_id: str


@attrs.frozen
class StoredMessageList:
    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool
    first_id: str
    last_id: str


@attrs.frozen
class ModerationResult:
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    user_message: str | None = None
    metadata: dict[str, Any] | None = None


@attrs.frozen
class ModerationResponse:
    id: str
    model: str
    results: list[ModerationResult]


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
