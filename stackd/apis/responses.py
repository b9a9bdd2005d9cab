"""Every answer body of the API (API.md §2) as attrs classes: the one definition that the server
routes build their bodies from, that ``@documented(answer=...)`` shows in ``GET /v1/openapi.json``
(:mod:`stackd.schema`), and that :mod:`stackd.client` structures its results into.

It imports no server or config code, so the client imports it without the server; messages and
tool calls are the request types of :mod:`stackd.apis.native.types`, the same shape both ways.

One class serves both readers:

- The document is precise: server-chosen enums are ``Literal`` (the schema lists the values),
  ids carry their bounds, fields carry ``doc``. Every object allows other keys, so the OpenAI
  answers a provider passes through list the fields stackd relies on and allow any other.
- The client is lenient: structuring ignores unknown fields, and each enum is :data:`Open`, a
  ``Literal`` whose structure hook accepts any string, so a client keeps working against a newer
  server that adds a value.

The hot inference routes build these bodies as dicts (no per-chunk object building on the
server); ``tests/test_client_types.py`` and ``tests/test_openapi_fuzz.py`` hold them to these classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

import attrs
import cattrs

from stackd.apis.models import MAX_ID_CHARS, ModelType, OnFailure
from stackd.apis.native.types import AssistantMessage, StopReason, ToolCall
from stackd.convert import Check, Hook, Tagged

__all__ = [
    # errors
    "ErrorBody",
    "ErrorDetail",
    "FieldErrorBody",
    "StreamError",
    # meta
    "Health",
    "ProviderInfo",
    "ProviderList",
    "Readiness",
    "RouteInfo",
    "RouteList",
    "VersionInfo",
    # resources
    "ModelAnswer",
    "ModelList",
    "ShieldAnswer",
    "ShieldList",
    # native inference and safety
    "ChatCompletionResponse",
    "ChatStreamChunk",
    "ChatStreamEvent",
    "ChatStreamFrame",
    "CompletionResponse",
    "CompletionStreamChunk",
    "CompletionStreamFrame",
    "EmbeddingsResponse",
    "Logprobs",
    "Metric",
    "RunShieldResponse",
    "SafetyViolation",
    "StreamDelta",
    "TextDelta",
    "ToolCallDelta",
    # OpenAI
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionFrame",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatDelta",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CompletionFrame",
    "Embedding",
    "EmbeddingList",
    "Moderation",
    "ModerationResult",
    "OPEN",
    "SENT",
    "Usage",
    # stored chat completions
    "StoredChatCompletion",
    "StoredCompletionList",
    "StoredMessage",
    "StoredMessageList",
]


def _text_or(other: Any) -> Hook:
    """A string as it is, anything else structured as ``other`` (``dict | str`` has no generic rule)."""

    def factory(conv: cattrs.Converter) -> Any:
        def hook(value: Any, _: Any) -> Any:
            return value if isinstance(value, str) else conv.structure(value, other)

        return hook

    return Hook(factory)


def _any_text(conv: cattrs.Converter) -> Any:
    def hook(value: Any, _: Any) -> Any:
        return conv.structure(value, str)

    return hook


SENT: Mapping[str, Any] = MappingProxyType({"sent": True})
"""Field metadata: the server always sends it, so the document requires it; the default is for the
client (structuring leniently) and for building by hand (:mod:`stackd.schema`)."""

OPEN = Hook(_any_text)
"""On a ``Literal``: the document lists its values, the client accepts any string (a newer
server may add one), so ``Annotated[Literal[...], OPEN]`` fields may hold other strings."""

Status = Annotated[Literal["OK", "Error", "Not Implemented"], OPEN]
Level = Annotated[Literal["info", "warn", "error"], OPEN]
Stop = Annotated[StopReason, OPEN]
Id = Annotated[str, Check(lambda s: 0 < len(s) <= MAX_ID_CHARS, "an id",
                          schema={"minLength": 1, "maxLength": MAX_ID_CHARS})]
Owner = dict[str, list[str]] | None


# ---- errors -------------------------------------------------------------------------------


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


@attrs.frozen
class StreamError:
    """The last event of a stream that failed after it began (or was ended by a shutdown)."""

    error: ErrorDetail


# ---- meta ---------------------------------------------------------------------------------


@attrs.frozen
class Health:
    """``GET /v1/health`` and ``/v1/health/live`` (``OK`` or ``Error``), and each provider's
    ``health`` (also ``Not Implemented``)."""

    status: Status
    message: str | None = None
    checked_at: float | None = attrs.field(default=None, metadata={
        "doc": "a provider's: when it was checked (Unix time; the last readiness run's while fresh)"})

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status} if self.message is None else {"status": self.status, "message": self.message}


@attrs.frozen
class Readiness:
    """``GET /v1/health/ready``."""

    status: Literal["OK", "Error"]
    checks: dict[str, dict[str, Any]] | None = attrs.field(
        default=None, metadata={"doc": "each dependency (metadata_store, quota_store, inference_store, "
                                       "provider:<id>, jwks): its status, message and latency"})
    message: str | None = None


@attrs.frozen
class VersionInfo:
    """``GET /v1/version``."""

    version: str


@attrs.frozen
class ProviderInfo:
    """An item of ``GET /v1/providers``; secrets in ``config`` arrive as ``********``."""

    api: str
    provider_id: str
    provider_type: str
    config: dict[str, Any] = attrs.field(factory=dict, metadata={**SENT, "doc": "the provider's settings; "
                                                                                 "secrets read ********"})
    health: Health = attrs.field(default=Health("Not Implemented"), metadata=SENT)

    def to_json(self) -> dict[str, Any]:
        return {"api": self.api, "provider_id": self.provider_id, "provider_type": self.provider_type,
                "config": self.config, "health": self.health.to_json()}


@attrs.frozen
class RouteInfo:
    """An item of ``GET /v1/inspect/routes``."""

    route: str
    method: str
    provider_types: list[str] = attrs.field(factory=list, metadata=SENT)


@attrs.frozen
class ProviderList:
    """``GET /v1/providers``."""

    data: list[ProviderInfo]


@attrs.frozen
class RouteList:
    """``GET /v1/inspect/routes``."""

    data: list[RouteInfo]


# ---- resources ------------------------------------------------------------------------------


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


# ---- native inference and safety ------------------------------------------------------------


@attrs.frozen
class Metric:
    metric: str
    value: int | float
    unit: str | None = attrs.field(default=None, metadata=SENT)


@attrs.frozen
class Logprobs:
    """Per token: the candidate tokens and their log probabilities."""

    logprobs_by_token: dict[str, float | None]


@attrs.frozen
class SafetyViolation:
    violation_level: Level
    user_message: str | None = attrs.field(default=None, metadata=SENT)
    metadata: dict[str, Any] = attrs.field(factory=dict, metadata=SENT)
    shield_id: str | None = None
    """Set when a model's guardrail answered (docs/safety.md): the shield that objected."""
    stage: str | None = None
    """``input`` or ``output``, for a guardrail's violation."""


@attrs.frozen
class ChatCompletionResponse:
    """``POST /v1/inference/chat-completion`` without ``stream``."""

    completion_message: AssistantMessage
    """``role: assistant``, ``content`` (a string), ``stop_reason`` (``end_of_turn``,
    ``end_of_message`` or ``out_of_tokens``) and the ``tool_calls`` the model made."""
    logprobs: list[Logprobs] | None = attrs.field(default=None, metadata=SENT)
    metrics: list[Metric] | None = attrs.field(default=None, metadata=SENT)
    violation: SafetyViolation | None = attrs.field(default=None, metadata={"doc": "when a guardrail answered"})


@attrs.frozen
class TextDelta:
    type: Literal["text"] = "text"
    text: str = ""


@attrs.frozen
class ToolCallDelta:
    type: Literal["tool_call"] = "tool_call"
    tool_call: Annotated[ToolCall | str, _text_or(ToolCall)] = ""
    """The parsed call, or its raw text when ``parse_status`` is ``failed``."""
    parse_status: str = "succeeded"


StreamDelta = Annotated[TextDelta | ToolCallDelta, Tagged("type", "stream delta")]


@attrs.frozen
class ChatStreamEvent:
    event_type: Annotated[Literal["start", "progress", "complete"], OPEN]
    delta: StreamDelta
    stop_reason: Stop | None = None
    logprobs: list[Logprobs] | None = None


@attrs.frozen
class ChatStreamChunk:
    """One event of ``POST /v1/inference/chat-completion`` with ``stream: true``."""

    event: ChatStreamEvent
    metrics: list[Metric] | None = None
    violation: SafetyViolation | None = None


ChatStreamFrame = ChatStreamChunk | StreamError
"""An event of the native chat stream: a chunk, or the error that ended it."""


@attrs.frozen
class CompletionResponse:
    """``POST /v1/inference/completion`` without ``stream``."""

    content: str
    stop_reason: Stop
    logprobs: list[Logprobs] | None = attrs.field(default=None, metadata=SENT)
    metrics: list[Metric] | None = attrs.field(default=None, metadata=SENT)


@attrs.frozen
class CompletionStreamChunk:
    """One chunk of ``POST /v1/inference/completion`` with ``stream: true``; the last has ``stop_reason``."""

    delta: str
    stop_reason: Stop | None = None
    logprobs: list[Logprobs] | None = None
    metrics: list[Metric] | None = None


CompletionStreamFrame = CompletionStreamChunk | StreamError


@attrs.frozen
class EmbeddingsResponse:
    """``POST /v1/inference/embeddings``: one vector per input, in input order."""

    embeddings: list[list[float]]


@attrs.frozen
class RunShieldResponse:
    """``POST /v1/safety/run-shield``: ``violation`` is None when the messages pass."""

    violation: SafetyViolation | None = attrs.field(default=None, metadata=SENT)


# ---- OpenAI (upstream answers passed through: the fields stackd relies on, and any other) ----


@attrs.frozen
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@attrs.frozen
class ChatMessage:
    role: str
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI's ``[{id, type: function, function: {name, arguments}}]``, as sent."""


@attrs.frozen
class ChatChoice:
    index: int
    message: ChatMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


@attrs.frozen
class ChatCompletion:
    """``POST /v1/chat/completions`` without ``stream``."""

    id: str
    choices: list[ChatChoice]
    model: str
    created: int = 0
    object: str = attrs.field(default="chat.completion", metadata=SENT)
    usage: Usage | None = None
    violation: SafetyViolation | None = None


@attrs.frozen
class ChatDelta:
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


@attrs.frozen
class ChatChunkChoice:
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


@attrs.frozen
class ChatCompletionChunk:
    """One chunk of ``POST /v1/chat/completions`` with ``stream: true`` (the last may carry only ``usage``)."""

    id: str
    choices: list[ChatChunkChoice]
    model: str
    created: int = 0
    object: str = attrs.field(default="chat.completion.chunk", metadata=SENT)
    usage: Usage | None = None
    violation: SafetyViolation | None = None


ChatCompletionFrame = ChatCompletionChunk | StreamError


@attrs.frozen
class CompletionChoice:
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


@attrs.frozen
class Completion:
    """``POST /v1/completions``, and each chunk of it with ``stream: true``."""

    id: str
    choices: list[CompletionChoice]
    model: str
    created: int = 0
    object: str = attrs.field(default="text_completion", metadata=SENT)
    usage: Usage | None = None


CompletionFrame = Completion | StreamError


@attrs.frozen
class Embedding:
    index: int
    embedding: Annotated[list[float] | str, _text_or(list[float])]
    """A list of floats, or base64 with ``encoding_format: base64``."""
    object: str = "embedding"


@attrs.frozen
class EmbeddingList:
    """``POST /v1/embeddings``."""

    data: list[Embedding]
    model: str
    object: str = attrs.field(default="list", metadata=SENT)
    usage: Usage | None = None


@attrs.frozen
class ModerationResult:
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    user_message: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Moderation:
    """``POST /v1/moderations``: one result per input."""

    id: str
    model: str
    results: list[ModerationResult]


# ---- stored chat completions ------------------------------------------------------------------


@attrs.frozen
class StoredChatCompletion:
    """``GET /v1/chat/completions/{id}``: the completion as answered, and the messages that produced it."""

    id: str
    choices: list[ChatChoice]
    model: str
    input_messages: list[dict[str, Any]]
    created: int = 0
    object: str = attrs.field(default="chat.completion", metadata=SENT)
    usage: Usage | None = None


@attrs.frozen
class StoredCompletionList:
    """``GET /v1/chat/completions``: a page; pass ``last_id`` as ``after`` while ``has_more``."""

    data: list[StoredChatCompletion]
    has_more: bool
    first_id: str = attrs.field(default="", metadata={**SENT, "doc": "the first item's id; empty on an empty page"})
    last_id: str = attrs.field(default="", metadata={**SENT, "doc": "pass as after for the next page; empty on an "
                                                                  "empty page"})
    object: Literal["list"] = attrs.field(default="list", metadata=SENT)


@attrs.frozen
class StoredMessage:
    """An input message of a stored completion: ``content`` as text, the parts in ``content_parts``."""

    id: str
    role: str
    content: str | None = None
    content_parts: list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


@attrs.frozen
class StoredMessageList:
    """``GET /v1/chat/completions/{id}/messages``."""

    data: list[StoredMessage]
    has_more: bool
    first_id: str = attrs.field(default="", metadata={**SENT, "doc": "the first item's id; empty on an empty page"})
    last_id: str = attrs.field(default="", metadata={**SENT, "doc": "pass as after for the next page; empty on an "
                                                                  "empty page"})
    object: Literal["list"] = attrs.field(default="list", metadata=SENT)

