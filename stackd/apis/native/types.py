"""Request types of the Llama Stack 0.2.x native inference routes, structured by stackd's converter.

The shapes are the ones ``llama-stack-client`` 0.2.x sends. Discriminated unions (message
``role``, content ``type``, sampling strategy ``type``, response format ``type``) get hooks of
their own so that a wrong tag reads ``unknown message role 'bot'; expected one of 'user',
'system', 'assistant', 'tool' @ $.messages[1].role`` instead of cattrs' union noise.

The hooks are declared on the types (``Annotated`` markers, see :mod:`stackd.convert`) and
built by each converter for itself; importing this module registers nothing. Unknown extra
fields are ignored (newer clients add fields; the converter does not forbid them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn

from stackd.convert import Check, Hook, StructureError, Tagged, describe

__all__ = [
    "URL",
    "ChatCompletionRequest",
    "CompletionRequest",
    "Content",
    "ContentItem",
    "EmbeddingsRequest",
    "GrammarFormat",
    "GreedyStrategy",
    "ImageItem",
    "ImageSource",
    "JsonSchemaFormat",
    "LogProbConfig",
    "Message",
    "ResponseFormat",
    "SamplingParams",
    "SamplingStrategy",
    "AssistantMessage",
    "SystemMessage",
    "TextItem",
    "ToolCall",
    "ToolConfig",
    "ToolDefinition",
    "ToolParamDefinition",
    "ToolResponseMessage",
    "TopKStrategy",
    "TopPStrategy",
    "UserMessage",
]

# Value checks live on small NewTypes so the message lands on the field's own path.
Temperature = Annotated[
    float, Check(lambda x: x > 0, "a number greater than 0", "; use strategy {type: greedy} for deterministic output",
                 {"exclusiveMinimum": 0})
]
TopP = Annotated[float, Check(lambda x: 0 < x <= 1, "a number in (0, 1]", schema={"exclusiveMinimum": 0, "maximum": 1})]
TopK = Annotated[int, Check(lambda x: x >= 1, "an integer of at least 1", schema={"minimum": 1})]
TokenCount = Annotated[int, Check(lambda x: x >= 0, "an integer of at least 0", schema={"minimum": 0})]

ToolPromptFormat = Literal["json", "function_tag", "python_list"]
SystemMessageBehavior = Literal["append", "replace"]
TextTruncation = Literal["none", "start", "end"]
EmbeddingTaskType = Literal["query", "document"]
StopReason = Literal["end_of_turn", "end_of_message", "out_of_tokens"]


# ---- hooks: each factory takes the converter it belongs to ---------------------------------


def _content_hook(conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            return conv.structure(value, ContentItem)  # type: ignore[arg-type]
        if isinstance(value, list):
            return conv.structure(value, list[ContentItem])
        raise StructureError(
            "expected a string, a content item ({type: text, text} or {type: image, image}) "
            f"or a list of content items, got {describe(value)}"
        )

    return hook


def _embedding_content_hook(conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            return conv.structure(value, ContentItem)  # type: ignore[arg-type]
        raise StructureError(f"expected a string or a content item {{type: text, text}}, got {describe(value)}")

    return hook


def _image_source_hook(conv: cattrs.Converter) -> Callable[[Any, Any], ImageSource]:
    fields = make_dict_structure_fn(ImageSource, conv, _cattrs_detailed_validation=True)

    def hook(value: Any, tp: Any) -> ImageSource:
        if not isinstance(value, Mapping):
            raise StructureError(f"expected {{url: {{uri}}}} or {{data: <base64>}}, got {describe(value)}")
        source: ImageSource = fields(value, tp)
        if (source.url is None) == (source.data is None):
            raise StructureError("an image needs exactly one of url: {uri: ...} or data: <base64 string>")
        return source

    return hook


def _tool_arguments(value: Any, _: Any) -> str | dict[str, Any]:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise StructureError(f"expected a mapping or a JSON string, got {describe(value)}")


def _tool_arguments_hook(_: cattrs.Converter) -> Callable[[Any, Any], str | dict[str, Any]]:
    return _tool_arguments


def _tool_parameters_hook(conv: cattrs.Converter) -> Callable[[Any, Any], dict[str, ToolParamDefinition] | None]:
    def hook(value: Any, _: Any) -> dict[str, ToolParamDefinition] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise StructureError(
                f"expected a mapping of parameter name to {{param_type, ...}}, got {describe(value)}"
            )
        out: dict[str, ToolParamDefinition] = {}
        errors: list[Exception] = []
        for name, item in value.items():
            try:
                out[str(name)] = conv.structure(item, ToolParamDefinition)
            except Exception as exc:  # noqa: BLE001 - collected and re-raised with the parameter's name
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    AttributeValidationNote(f"Structuring @ attribute {name}", str(name), ToolParamDefinition),
                ]
                errors.append(exc)
        if errors:
            raise ClassValidationError("While structuring tool parameters", errors, dict)
        return out

    return hook


# ---- content -------------------------------------------------------------------------------


@attrs.frozen
class URL:
    uri: str


@attrs.frozen
class ImageSource:
    """``{"url": {"uri": ...}}`` or ``{"data": <base64>}``; exactly one is needed."""

    json_schema_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["url"], "not": {"required": ["data"]}},
                  {"required": ["data"], "not": {"required": ["url"]}}],
    }

    url: URL | None = None
    data: str | None = None


@attrs.frozen
class TextItem:
    text: str
    type: Literal["text"] = "text"


@attrs.frozen
class ImageItem:
    image: Annotated[ImageSource, Hook(_image_source_hook)]
    type: Literal["image"] = "image"


ContentItem = Annotated[TextItem | ImageItem, Tagged("type", "content item")]
Content = Annotated[str | TextItem | ImageItem | list[ContentItem], Hook(_content_hook)]
EmbeddingContent = Annotated[str | TextItem | ImageItem, Hook(_embedding_content_hook)]


# ---- messages ------------------------------------------------------------------------------


@attrs.frozen
class ToolCall:
    call_id: str
    tool_name: str
    # 0.2.x sends a dict; a string is what a model produced that is not valid JSON.
    arguments: Annotated[str | dict[str, Any], Hook(_tool_arguments_hook)]
    arguments_json: str | None = None


@attrs.frozen
class UserMessage:
    content: Content
    context: Content | None = None
    role: Literal["user"] = "user"


@attrs.frozen
class SystemMessage:
    content: Content
    role: Literal["system"] = "system"


@attrs.frozen
class AssistantMessage:
    content: Content
    stop_reason: StopReason | None = None
    tool_calls: list[ToolCall] | None = None
    role: Literal["assistant"] = "assistant"


@attrs.frozen
class ToolResponseMessage:
    call_id: str
    content: Content
    role: Literal["tool"] = "tool"


Message = Annotated[UserMessage | SystemMessage | AssistantMessage | ToolResponseMessage, Tagged("role", "message")]


# ---- sampling, formats, tools --------------------------------------------------------------


@attrs.frozen
class GreedyStrategy:
    type: Literal["greedy"] = "greedy"


@attrs.frozen
class TopPStrategy:
    temperature: Temperature | None = None
    top_p: TopP | None = 0.95
    type: Literal["top_p"] = "top_p"


@attrs.frozen
class TopKStrategy:
    top_k: TopK
    type: Literal["top_k"] = "top_k"


SamplingStrategy = Annotated[GreedyStrategy | TopPStrategy | TopKStrategy, Tagged("type", "sampling strategy")]


@attrs.frozen
class SamplingParams:
    strategy: SamplingStrategy = attrs.field(factory=GreedyStrategy)
    max_tokens: TokenCount | None = 0  # 0 and null both mean "the model's limit"
    repetition_penalty: float | None = 1.0
    stop: list[str] | None = None


@attrs.frozen
class JsonSchemaFormat:
    json_schema: dict[str, Any]
    type: Literal["json_schema"] = "json_schema"


@attrs.frozen
class GrammarFormat:
    bnf: dict[str, Any]
    type: Literal["grammar"] = "grammar"


ResponseFormat = Annotated[JsonSchemaFormat | GrammarFormat, Tagged("type", "response format")]


@attrs.frozen
class ToolParamDefinition:
    param_type: str
    description: str | None = None
    required: bool | None = True
    default: Any = None


@attrs.frozen
class ToolDefinition:
    tool_name: str
    description: str | None = None
    parameters: Annotated[dict[str, ToolParamDefinition] | None, Hook(_tool_parameters_hook)] = None


@attrs.frozen
class ToolConfig:
    # auto | required | none | a tool's name; null means auto, and lets a top-level tool_choice stand
    tool_choice: str | None = None
    tool_prompt_format: ToolPromptFormat | None = None
    system_message_behavior: SystemMessageBehavior | None = "append"


@attrs.frozen
class LogProbConfig:
    top_k: int | None = 0


# ---- requests ------------------------------------------------------------------------------


@attrs.frozen
class ChatCompletionRequest:
    model_id: str
    messages: list[Message]
    sampling_params: SamplingParams | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: str | None = None  # deprecated in 0.2.x in favour of tool_config; both accepted
    tool_prompt_format: ToolPromptFormat | None = None
    tool_config: ToolConfig | None = None
    stream: bool | None = False
    logprobs: LogProbConfig | None = None


@attrs.frozen
class CompletionRequest:
    model_id: str
    content: Content
    sampling_params: SamplingParams | None = None
    response_format: ResponseFormat | None = None
    stream: bool | None = False
    logprobs: LogProbConfig | None = None


@attrs.frozen
class EmbeddingsRequest:
    model_id: str
    contents: list[EmbeddingContent]
    text_truncation: TextTruncation | None = "none"
    output_dimension: int | None = None
    task_type: EmbeddingTaskType | None = None
