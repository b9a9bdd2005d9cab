"""Translation between the Llama Stack 0.2.x native inference routes and OpenAI-shaped provider calls.

Providers speak OpenAI (:mod:`stackd.apis.inference`); ``/v1/inference/chat-completion``,
``/completion`` and ``/embeddings`` are served by turning the native request into OpenAI
params, and the OpenAI answer (or each stream chunk) back into the body ``llama-stack-client``
0.2.x parses. No HTTP here: the routes call these functions.

Output bodies carry every field with ``null`` where 0.2.12 had ``None``, because 0.2.12's
pydantic serialisation did and some clients read the keys directly.

The stream translators run once per streamed token, so they work on the chunk dicts as
they come: no structuring, no copies, one small dict per event.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from stackd.apis.native_types import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    Content,
    EmbeddingsRequest,
    GrammarFormat,
    GreedyStrategy,
    ImageItem,
    JsonSchemaFormat,
    LogProbConfig,
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
from stackd.errors import BadRequest, FieldError, UpstreamBadResponse

__all__ = [
    "ChatStreamTranslator",
    "CompletionStreamTranslator",
    "chat_to_openai",
    "completion_to_openai",
    "embeddings_to_openai",
    "openai_to_chat_response",
    "openai_to_completion_response",
    "openai_to_embeddings_response",
]

_CHAT_STOP = {"stop": "end_of_turn", "length": "out_of_tokens", "tool_calls": "end_of_message"}
# 0.2.12 read text completions' finish reasons differently from chat's: unknown means truncated.
_COMPLETION_STOP = {
    "stop": "end_of_turn",
    "eos": "end_of_turn",
    "eos_token": "end_of_turn",
    "eom": "end_of_message",
    "length": "out_of_tokens",
}
# Llama 3 end-of-turn/message tokens that some raw completion servers leave in the text.
_EOT, _EOM = "<|eot_id|>", "<|eom_id|>"

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


# ---- requests: native -> OpenAI ------------------------------------------------------------


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


# ---- responses: OpenAI -> native -----------------------------------------------------------


def _first_choice(resp: Any, what: str) -> Mapping[str, Any]:
    choices = resp.get("choices") if isinstance(resp, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise UpstreamBadResponse(f"the upstream {what} has no choices; expected an OpenAI {what} body")
    return choices[0]


def _metrics(usage: Any) -> list[dict[str, Any]] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    total = usage.get("total_tokens") or prompt + completion
    return [
        {"metric": "prompt_tokens", "value": prompt, "unit": None},
        {"metric": "completion_tokens", "value": completion, "unit": None},
        {"metric": "total_tokens", "value": total, "unit": None},
    ]


def _chat_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not content:
        return None
    out = []
    for token in content:
        top = token.get("top_logprobs")
        if top:
            out.append({"logprobs_by_token": {t.get("token", ""): t.get("logprob") for t in top}})
        else:
            # Asked without top_k: only the chosen token has a logprob.
            out.append({"logprobs_by_token": {token.get("token", ""): token.get("logprob")}})
    return out


def _tool_call(call_id: Any, name: Any, arguments: str) -> dict[str, Any]:
    """A native ToolCall; ``arguments`` stays the raw string when it is not a JSON object."""
    text = arguments or "{}"
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    return {
        "call_id": call_id or f"call_{secrets.token_hex(12)}",
        "tool_name": name or "",
        "arguments": parsed if isinstance(parsed, dict) else arguments,
        "arguments_json": text if isinstance(parsed, dict) else None,
    }


def openai_to_chat_response(resp: dict[str, Any]) -> dict[str, Any]:
    """The native chat-completion body for an OpenAI ``chat.completion`` body."""
    choice = _first_choice(resp, "chat.completion")
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise UpstreamBadResponse("the upstream chat.completion choice has no message")
    content = message.get("content")
    if isinstance(content, list):  # some servers answer in parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    tool_calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        tool_calls.append(_tool_call(call.get("id"), function.get("name"), function.get("arguments") or ""))
    return {
        "metrics": _metrics(resp.get("usage")),
        "completion_message": {
            "role": "assistant",
            "content": content or "",
            "stop_reason": _CHAT_STOP.get(choice.get("finish_reason") or "stop", "end_of_turn"),
            "tool_calls": tool_calls,
        },
        "logprobs": _chat_logprobs(choice.get("logprobs")),
    }


def _completion_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    if not isinstance(logprobs, Mapping):
        return None
    top = logprobs.get("top_logprobs")
    if top and all(isinstance(t, Mapping) for t in top):
        return [{"logprobs_by_token": dict(t)} for t in top]
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if tokens and values:
        return [{"logprobs_by_token": {t: v}} for t, v in zip(tokens, values, strict=False)]
    return None


def openai_to_completion_response(resp: dict[str, Any]) -> dict[str, Any]:
    """The native completion body for an OpenAI ``text_completion`` body."""
    choice = _first_choice(resp, "text_completion")
    text = choice.get("text") or ""
    if text.endswith(_EOT):
        text, stop_reason = text[: -len(_EOT)], "end_of_turn"
    elif text.endswith(_EOM):
        text, stop_reason = text[: -len(_EOM)], "end_of_message"
    else:
        stop_reason = _COMPLETION_STOP.get(choice.get("finish_reason") or "", "out_of_tokens")
    return {
        "metrics": _metrics(resp.get("usage")),
        "content": text,
        "stop_reason": stop_reason,
        "logprobs": _completion_logprobs(choice.get("logprobs")),
    }


def openai_to_embeddings_response(resp: dict[str, Any]) -> dict[str, Any]:
    """``{"embeddings": [[...], ...]}`` in input order."""
    data = resp.get("data") if isinstance(resp, Mapping) else None
    if not isinstance(data, list) or not all(
        isinstance(d, Mapping) and isinstance(d.get("embedding"), list) for d in data
    ):
        raise UpstreamBadResponse("the upstream embeddings answer has no data[].embedding lists")
    ordered = sorted(data, key=lambda d: d.get("index") or 0)
    return {"embeddings": [d["embedding"] for d in ordered]}


# ---- streams -------------------------------------------------------------------------------


def _event(
    event_type: str,
    delta: dict[str, Any],
    stop_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    metrics: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "event": {"event_type": event_type, "delta": delta, "logprobs": logprobs, "stop_reason": stop_reason},
        "metrics": metrics,
    }


class ChatStreamTranslator:
    """OpenAI ``chat.completion.chunk`` dicts in, native stream chunk bodies out.

    As in 0.2.12: a ``start`` event with an empty text delta first; a ``progress`` text event
    per content delta; tool-call fragments gathered by index and emitted once complete (at
    ``finish_reason``) as ``succeeded`` with the parsed call, or ``failed`` with
    ``"name(arguments)"`` when the arguments are not a JSON object; then a ``complete`` event
    with the stop reason and, from the usage chunk, the token metrics.
    """

    __slots__ = ("_calls", "_started", "_stop_reason", "_usage")

    def __init__(self) -> None:
        self._started = False
        self._stop_reason: str | None = None
        self._usage: Any = None
        # index -> [id, name, argument fragments]
        self._calls: dict[int, list[Any]] = {}

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(_event("start", {"type": "text", "text": ""}))
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            logprobs = choice.get("logprobs")
            out.append(
                _event(
                    "progress",
                    {"type": "text", "text": content},
                    logprobs=_chat_logprobs(logprobs) if logprobs else None,
                )
            )
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            self._gather(tool_calls)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._stop_reason = _CHAT_STOP.get(finish_reason, "end_of_turn")
            self._flush_calls(out)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The events after the upstream's last chunk: pending tool calls, then ``complete``."""
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(_event("start", {"type": "text", "text": ""}))
        self._flush_calls(out)
        # 0.2.12 (vLLM) called a stream that ended without a finish reason end_of_message.
        out.append(
            _event(
                "complete",
                {"type": "text", "text": ""},
                stop_reason=self._stop_reason or "end_of_message",
                metrics=_metrics(self._usage),
            )
        )
        return out

    def _gather(self, tool_calls: list[dict[str, Any]]) -> None:
        for call in tool_calls:
            index = call.get("index") or 0
            buffer = self._calls.get(index)
            if buffer is None:
                buffer = self._calls[index] = [None, "", []]
            if call.get("id") and not buffer[0]:
                buffer[0] = call["id"]
            function = call.get("function")
            if function:
                name = function.get("name")
                # OpenAI sends the name once; some servers repeat it whole in every fragment.
                if name and name != buffer[1]:
                    buffer[1] += name
                arguments = function.get("arguments")
                if arguments:
                    buffer[2].append(arguments)

    def _flush_calls(self, out: list[dict[str, Any]]) -> None:
        if not self._calls:
            return
        for index in sorted(self._calls):
            call_id, name, fragments = self._calls[index]
            arguments = "".join(fragments)
            call = _tool_call(call_id, name, arguments)
            if call["arguments_json"] is not None and name:
                delta = {"type": "tool_call", "tool_call": call, "parse_status": "succeeded"}
            else:
                delta = {"type": "tool_call", "tool_call": f"{name}({arguments})", "parse_status": "failed"}
            out.append(_event("progress", delta, stop_reason=self._stop_reason))
        self._calls.clear()


class CompletionStreamTranslator:
    """OpenAI ``text_completion`` stream chunks in, native completion stream chunks out:
    ``{delta, stop_reason: null, logprobs, metrics: null}`` per piece of text, then one last
    ``{delta: "", stop_reason, logprobs: null, metrics}``."""

    __slots__ = ("_stop_reason", "_usage")

    def __init__(self) -> None:
        self._stop_reason: str | None = None
        self._usage: Any = None

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return []
        choice = choices[0]
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._stop_reason = _COMPLETION_STOP.get(finish_reason, "out_of_tokens")
        text = choice.get("text") or ""
        if text in (_EOT, _EOM):
            self._stop_reason = "end_of_turn" if text == _EOT else "end_of_message"
            return []
        logprobs = choice.get("logprobs")
        converted = _completion_logprobs(logprobs) if logprobs else None
        if not text and converted is None:
            return []
        return [{"delta": text, "stop_reason": None, "logprobs": converted, "metrics": None}]

    def finish(self) -> list[dict[str, Any]]:
        return [
            {
                "delta": "",
                "stop_reason": self._stop_reason,
                "logprobs": None,
                "metrics": _metrics(self._usage),
            }
        ]


# Keep the request-side names importable from here: the routes structure with them.
__all__ += ["ChatCompletionRequest", "CompletionRequest", "EmbeddingsRequest", "LogProbConfig"]
