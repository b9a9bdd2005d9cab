"""The response bodies of every route (API.md §2) as attrs classes: one definition for the server
that writes them and for :mod:`stackd.client` that reads them.

It imports no server or config code, so the client imports it without the server; messages and
tool calls are the request types of :mod:`stackd.apis.native.types`, the same shape both ways.
Fields are what the routes document; a body may carry more (a provider's own fields pass
through the OpenAI routes untouched) and structuring ignores them, so a client keeps working
against a newer server. Server-chosen enums (stop reasons, roles) are plain ``str`` for the same
reason. The hot inference routes build these bodies as dicts (no per-chunk object building on
the server); ``tests/test_client_types.py`` holds them to these classes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import attrs
import cattrs

from stackd.apis.native.types import AssistantMessage, ToolCall
from stackd.convert import Hook, Tagged

__all__ = [
    # meta
    "Health",
    "ProviderInfo",
    "RouteInfo",
    "VersionInfo",
    # native inference and safety
    "ChatCompletionResponse",
    "ChatStreamChunk",
    "ChatStreamEvent",
    "CompletionResponse",
    "CompletionStreamChunk",
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
    "ChatChoice",
    "ChatChunkChoice",
    "ChatDelta",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "Embedding",
    "EmbeddingList",
    "Moderation",
    "ModerationResult",
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


# ---- meta ---------------------------------------------------------------------------------


@attrs.frozen
class Health:
    """``GET /v1/health``, and each provider's ``health``: ``OK``, ``Error`` or ``Not Implemented``."""

    status: str
    message: str | None = None
    checked_at: float | None = None
    """A provider's: when its health was checked (Unix time; the last readiness run's while fresh)."""

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status} if self.message is None else {"status": self.status, "message": self.message}


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
    config: dict[str, Any] = attrs.field(factory=dict)
    health: Health = Health("Not Implemented")

    def to_json(self) -> dict[str, Any]:
        return {"api": self.api, "provider_id": self.provider_id, "provider_type": self.provider_type,
                "config": self.config, "health": self.health.to_json()}


@attrs.frozen
class RouteInfo:
    """An item of ``GET /v1/inspect/routes``."""

    route: str
    method: str
    provider_types: list[str] = attrs.field(factory=list)


# ---- native inference and safety ------------------------------------------------------------


@attrs.frozen
class Metric:
    metric: str
    value: int | float
    unit: str | None = None


@attrs.frozen
class Logprobs:
    """Per token: the candidate tokens and their log probabilities."""

    logprobs_by_token: dict[str, float | None]


@attrs.frozen
class SafetyViolation:
    violation_level: str
    """``info``, ``warn`` or ``error``."""
    user_message: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
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
    logprobs: list[Logprobs] | None = None
    metrics: list[Metric] | None = None
    violation: SafetyViolation | None = None


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
    event_type: str
    """``start``, ``progress`` or ``complete``."""
    delta: StreamDelta
    stop_reason: str | None = None
    logprobs: list[Logprobs] | None = None


@attrs.frozen
class ChatStreamChunk:
    """One event of ``POST /v1/inference/chat-completion`` with ``stream: true``."""

    event: ChatStreamEvent
    metrics: list[Metric] | None = None
    violation: SafetyViolation | None = None


@attrs.frozen
class CompletionResponse:
    """``POST /v1/inference/completion`` without ``stream``."""

    content: str
    stop_reason: str
    logprobs: list[Logprobs] | None = None
    metrics: list[Metric] | None = None


@attrs.frozen
class CompletionStreamChunk:
    """One chunk of ``POST /v1/inference/completion`` with ``stream: true``; the last has ``stop_reason``."""

    delta: str
    stop_reason: str | None = None
    logprobs: list[Logprobs] | None = None
    metrics: list[Metric] | None = None


@attrs.frozen
class EmbeddingsResponse:
    """``POST /v1/inference/embeddings``: one vector per input, in input order."""

    embeddings: list[list[float]]


@attrs.frozen
class RunShieldResponse:
    """``POST /v1/safety/run-shield``: ``violation`` is None when the messages pass."""

    violation: SafetyViolation | None = None


# ---- OpenAI -------------------------------------------------------------------------------


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
    object: str = "chat.completion"
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
    object: str = "chat.completion.chunk"
    usage: Usage | None = None
    violation: SafetyViolation | None = None


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
    object: str = "text_completion"
    usage: Usage | None = None


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
    object: str = "list"
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
    object: str = "chat.completion"
    usage: Usage | None = None


@attrs.frozen
class StoredCompletionList:
    """``GET /v1/chat/completions``: a page; pass ``last_id`` as ``after`` while ``has_more``."""

    data: list[StoredChatCompletion]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    object: str = "list"


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
    first_id: str | None = None
    last_id: str | None = None
    object: str = "list"

