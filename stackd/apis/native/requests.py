"""Native requests -> OpenAI params: what a provider is called with for a native inference route."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from stackd.apis.native.types import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    Content,
    EmbeddingsRequest,
    GrammarFormat,
    GreedyStrategy,
    ImageItem,
    JsonSchemaFormat,
    ResponseFormat,
    SamplingParams,
    SystemMessage,
    TextItem,
    ToolDefinition,
    ToolResponseMessage,
    TopKStrategy,
    TopPStrategy,
    UserMessage,
)
from stackd.errors import BadRequest, FieldError

__all__ = ["chat_to_openai", "completion_to_openai", "embeddings_to_openai"]

_PARAM_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "dict": "object",
    "list": "array",
}
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _bad(loc: str, msg: str) -> BadRequest:
    return BadRequest(f"invalid request: {msg} @ {loc}", [FieldError(loc, msg)])


def chat_to_openai(req: ChatCompletionRequest, provider_model_id: str) -> dict[str, Any]:
    """OpenAI ``chat/completions`` params for a structured native chat-completion request."""
    if not req.messages:
        raise _bad("$.messages", "at least one message is required")
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(req.messages):
        messages.append(_message(message, f"$.messages[{i}]"))
    params: dict[str, Any] = {"model": provider_model_id, "messages": messages}
    _sampling(req.sampling_params, params)
    if req.response_format is not None:
        params["response_format"] = _response_format(req.response_format)
    _tools(req, params)
    if req.logprobs is not None:
        params["logprobs"] = True
        if req.logprobs.top_k:
            params["top_logprobs"] = req.logprobs.top_k
    if req.stream:
        params["stream"] = True
        # Usage arrives in a last chunk only when asked for; it becomes the complete event's metrics.
        params["stream_options"] = {"include_usage": True}
    return params


def completion_to_openai(req: CompletionRequest, provider_model_id: str) -> dict[str, Any]:
    """OpenAI ``completions`` params for a structured native completion request."""
    params: dict[str, Any] = {"model": provider_model_id, "prompt": _prompt(req.content, "$.content")}
    _sampling(req.sampling_params, params)
    if req.response_format is not None:
        params["response_format"] = _response_format(req.response_format)
    if req.logprobs is not None:
        # The completions API takes the number of alternatives itself; 0 gives the chosen token's.
        params["logprobs"] = req.logprobs.top_k or 0
    if req.stream:
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
    return params


def embeddings_to_openai(req: EmbeddingsRequest, provider_model_id: str) -> dict[str, Any]:
    """OpenAI ``embeddings`` params. ``text_truncation`` and ``task_type`` have no OpenAI
    counterpart and are not passed on (as in 0.2.12's OpenAI-compatible providers)."""
    inputs: list[str] = []
    for i, item in enumerate(req.contents):
        if isinstance(item, str):
            inputs.append(item)
        elif isinstance(item, TextItem):
            inputs.append(item.text)
        else:
            raise _bad(f"$.contents[{i}]", "embeddings take text only; send {type: text, text} or a string")
    if not inputs:
        raise _bad("$.contents", "at least one content is required")
    params: dict[str, Any] = {"model": provider_model_id, "input": inputs}
    if req.output_dimension is not None:
        params["dimensions"] = req.output_dimension
    return params


def _message(message: Any, loc: str) -> dict[str, Any]:
    if isinstance(message, UserMessage):
        content = _content(message.content, f"{loc}.content")
        if message.context is not None:
            # 0.2.12 put RAG context after the content, separated by a blank line.
            context = _content(message.context, f"{loc}.context")
            if isinstance(content, str) and isinstance(context, str):
                content = f"{content}\n\n{context}"
            else:
                content = [*_parts(content), {"type": "text", "text": "\n\n"}, *_parts(context)]
        return {"role": "user", "content": content}
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": _content(message.content, f"{loc}.content")}
    if isinstance(message, ToolResponseMessage):
        return {
            "role": "tool",
            "tool_call_id": message.call_id,
            "content": _content(message.content, f"{loc}.content"),
        }
    assert isinstance(message, AssistantMessage)
    out: dict[str, Any] = {"role": "assistant", "content": _content(message.content, f"{loc}.content")}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.tool_name, "arguments": _arguments_string(call)},
            }
            for call in message.tool_calls
        ]
    return out


def _arguments_string(call: Any) -> str:
    if call.arguments_json:
        return str(call.arguments_json)
    if isinstance(call.arguments, str):
        return call.arguments
    return orjson.dumps(call.arguments).decode()


def _parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _content(content: Content, loc: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_part(item, f"{loc}[{i}]") for i, item in enumerate(content)]
    return [_part(content, loc)]


def _part(item: TextItem | ImageItem, loc: str) -> dict[str, Any]:
    if isinstance(item, TextItem):
        return {"type": "text", "text": item.text}
    return {"type": "image_url", "image_url": {"url": _image_url(item, f"{loc}.image")}}


def _image_url(item: ImageItem, loc: str) -> str:
    source = item.image
    if source.url is not None:
        return source.url.uri
    data = source.data or ""
    if data.startswith("data:"):
        return data
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{loc}.data", "expected base64-encoded image bytes") from None
    return f"data:image/{_image_format(raw)};base64,{data}"


def _image_format(raw: bytes) -> str:
    if raw.startswith(b"\x89PNG"):
        return "png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    return "png"  # what 0.2.12 assumed when it could not tell


def _prompt(content: Content, loc: str) -> str:
    if isinstance(content, str):
        return content
    items = content if isinstance(content, list) else [content]
    texts: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, TextItem):
            where = f"{loc}[{i}]" if isinstance(content, list) else loc
            raise _bad(where, "completion takes text only; send images to /v1/inference/chat-completion")
        texts.append(item.text)
    return "".join(texts)


def _sampling(sampling: SamplingParams | None, params: dict[str, Any]) -> None:
    if sampling is None:
        # 0.2.12 defaulted to SamplingParams(): greedy.
        sampling = SamplingParams()
    strategy = sampling.strategy
    if isinstance(strategy, GreedyStrategy):
        params["temperature"] = 0.0
    elif isinstance(strategy, TopPStrategy):
        if strategy.temperature is not None:
            params["temperature"] = strategy.temperature
        if strategy.top_p is not None:
            params["top_p"] = strategy.top_p
    else:
        assert isinstance(strategy, TopKStrategy)
        params["top_k"] = strategy.top_k  # not OpenAI's; vLLM, llama.cpp and Ollama read it
    if sampling.max_tokens:
        params["max_tokens"] = sampling.max_tokens
    if sampling.repetition_penalty is not None and sampling.repetition_penalty != 1.0:
        params["repetition_penalty"] = sampling.repetition_penalty  # vLLM's name for it
    if sampling.stop is not None:
        params["stop"] = sampling.stop


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if isinstance(fmt, GrammarFormat):
        raise _bad(
            "$.response_format.type",
            "grammar response format is not supported; use {type: json_schema, json_schema: {...}}",
        )
    assert isinstance(fmt, JsonSchemaFormat)
    title = fmt.json_schema.get("title")
    name = title if isinstance(title, str) and _SCHEMA_NAME.match(title) else "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": fmt.json_schema}}


def _tools(req: ChatCompletionRequest, params: dict[str, Any]) -> None:
    config = req.tool_config
    choice, loc = req.tool_choice, "$.tool_choice"
    if config is not None and config.tool_choice is not None:
        if choice is not None and choice != config.tool_choice:
            raise _bad(
                "$.tool_choice",
                f"tool_choice {choice!r} and tool_config.tool_choice {config.tool_choice!r} must match; "
                "send only tool_config",
            )
        choice, loc = config.tool_choice, "$.tool_config.tool_choice"
    choice = choice or "auto"
    tools = req.tools or []
    if choice == "none" or not tools:
        # 0.2.12 dropped the tools for "none"; OpenAI servers refuse a tool_choice without tools.
        if choice not in ("none", "auto"):
            raise _bad(loc, f"tool_choice {choice!r} needs at least one tool in tools")
        return
    params["tools"] = [_tool(tool) for tool in tools]
    if choice in ("auto", "required"):
        params["tool_choice"] = choice
        return
    names = [tool.tool_name for tool in tools]
    if choice not in names:
        raise _bad(loc, f"tool_choice {choice!r} is not one of the tools: {', '.join(names)}")
    params["tool_choice"] = {"type": "function", "function": {"name": choice}}


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in (tool.parameters or {}).items():
        prop = _param_type(param.param_type)
        if param.description:
            prop["description"] = param.description
        if param.default is not None:
            prop["default"] = param.default
        if param.required:
            required.append(name)
        properties[name] = prop
    function: dict[str, Any] = {"name": tool.tool_name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": function}


def _param_type(param_type: str) -> dict[str, Any]:
    basic = _PARAM_TYPES.get(param_type)
    if basic is not None:
        return {"type": basic}
    if param_type.startswith("list[") and param_type.endswith("]"):
        inner = param_type[5:-1]
        return {"type": "array", "items": {"type": _PARAM_TYPES.get(inner, inner)}}
    return {"type": param_type}  # already a JSON-schema type name (string, integer, object ...)
