"""OpenAI-shaped requests to Ollama's native API and Ollama's answers back to OpenAI shapes.

Pure functions, no I/O: the HTTP side lives in :mod:`stackd_provider_ollama.inference`.
Ollama's wire format is its documented native API (``/api/chat``, ``/api/generate``,
``/api/embed``): options go in an ``options`` object, tool-call arguments are JSON objects
(not strings), images are bare base64 strings on the message, counts are
``prompt_eval_count`` / ``eval_count``.
"""

from __future__ import annotations

import base64
import sys
import time
import uuid
from array import array
from collections.abc import Mapping
from typing import Any

import orjson

from stackd.errors import BadRequest, FieldError

__all__ = [
    "OLLAMA_OPTION_NAMES",
    "chat_chunk",
    "chat_request",
    "chat_response",
    "completion_chunk",
    "completion_request",
    "completion_response",
    "embeddings_request",
    "embeddings_response",
    "finish_reason",
    "new_id",
    "openai_tool_calls",
    "usage_of",
]

# Ollama's runtime options (Modelfile parameters) that a client may send as top-level
# extra fields of an OpenAI request; they move into Ollama's ``options`` object.
OLLAMA_OPTION_NAMES = frozenset(
    {
        "num_keep",
        "num_predict",
        "top_k",
        "min_p",
        "typical_p",
        "repeat_last_n",
        "repeat_penalty",
        "penalize_newline",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "num_thread",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
        "draft_num_predict",
        "numa",
    }
)

# OpenAI fields with a direct Ollama option of the same meaning.
_SAME_NAME_OPTIONS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")

# Ollama's own top-level request fields a client may send as extra fields.
_TOP_LEVEL_PASSTHROUGH = ("think",)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _bad(loc: str, msg: str) -> BadRequest:
    return BadRequest(f"{msg} @ {loc}", [FieldError(loc, msg)])


def _reject_unsupported(params: Mapping[str, Any], provider_type: str) -> None:
    n = params.get("n")
    if n not in (None, 1):
        raise _bad("$.n", f"n={n!r} is not supported by {provider_type}: Ollama returns one choice; send n=1")
    best_of = params.get("best_of")
    if best_of not in (None, 1):
        raise _bad("$.best_of", f"best_of is not supported by {provider_type}; leave it out")
    if params.get("echo"):
        raise _bad("$.echo", f"echo is not supported by {provider_type}; leave it out")
    if params.get("logprobs") or params.get("top_logprobs"):
        raise _bad("$.logprobs", f"logprobs are not supported by {provider_type}; leave them out")


def _options(params: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    extra = params.get("options")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise _bad("$.options", "expected a mapping of Ollama options")
        options.update(extra)
    for name in _SAME_NAME_OPTIONS:
        value = params.get(name)
        if value is not None:
            options[name] = value
    for name in OLLAMA_OPTION_NAMES:
        value = params.get(name)
        if value is not None:
            options[name] = value
    max_tokens = params.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = params.get("max_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = params.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            options["stop"] = [stop]
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            options["stop"] = stop
        else:
            raise _bad("$.stop", "expected a string or a list of strings")
    return options


def _format(params: Mapping[str, Any]) -> Any:
    response_format = params.get("response_format")
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise _bad("$.response_format", 'expected a mapping like {"type": "json_object"}')
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise _bad(
                "$.response_format.json_schema.schema",
                "a json_schema response format needs its JSON schema object here",
            )
        return schema
    raise _bad(
        "$.response_format.type", f"unknown response format {kind!r}; use text, json_object or json_schema"
    )


def _common(params: Mapping[str, Any], keep_alive: str | int | None, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": params["model"], "stream": stream}
    options = _options(params)
    if options:
        body["options"] = options
    fmt = _format(params)
    if fmt is not None:
        body["format"] = fmt
    ka = params.get("keep_alive", keep_alive)
    if ka is not None:
        body["keep_alive"] = ka
    for name in _TOP_LEVEL_PASSTHROUGH:
        if name in params:
            body[name] = params[name]
    return body


# --- chat -------------------------------------------------------------------------------------


def _image_of(part: Mapping[str, Any], loc: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str):
        raise _bad(f"{loc}.image_url.url", "expected an image URL string")
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise _bad(f"{loc}.image_url.url", "expected a base64 data URL like data:image/png;base64,...")
        return data
    # stackd does not fetch URLs on a client's behalf (that would let any caller make the
    # server request internal addresses); Ollama itself only takes inline images.
    raise _bad(
        f"{loc}.image_url.url",
        "Ollama takes inline images only: send the image as a data:image/...;base64,... URL",
    )


def _content(content: Any, loc: str, images: list[str] | None) -> str:
    """Text of an OpenAI content value; image parts go to ``images`` when allowed."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(loc, "expected a string or a list of content parts")
    texts: list[str] = []
    for i, part in enumerate(content):
        ploc = f"{loc}[{i}]"
        if not isinstance(part, Mapping):
            raise _bad(ploc, 'expected a content part like {"type": "text", "text": ...}')
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{ploc}.text", "expected a string")
            texts.append(text)
        elif kind == "image_url" and images is not None:
            images.append(_image_of(part, ploc))
        else:
            raise _bad(f"{ploc}.type", f"content part type {kind!r} is not supported here by Ollama")
    return "\n".join(texts)


def _arguments_object(raw: Any, loc: str) -> Any:
    # OpenAI carries arguments as a JSON string; Ollama wants the object itself.
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _bad(loc, "tool call arguments must be a JSON object encoded as a string") from None
    if raw is None:
        return {}
    return raw


def _chat_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("$.messages", "expected a non-empty list of messages")
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}  # tool_call_id -> function name, for Ollama's tool_name
    for i, msg in enumerate(messages):
        loc = f"$.messages[{i}]"
        if not isinstance(msg, Mapping):
            raise _bad(loc, "expected a message mapping")
        role = msg.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _content(msg.get("content"), f"{loc}.content", None)})
        elif role == "user":
            images: list[str] = []
            item: dict[str, Any] = {
                "role": "user",
                "content": _content(msg.get("content"), f"{loc}.content", images),
            }
            if images:
                item["images"] = images
            out.append(item)
        elif role == "assistant":
            item = {"role": "assistant", "content": _content(msg.get("content"), f"{loc}.content", None)}
            calls = msg.get("tool_calls")
            if calls:
                item["tool_calls"] = [
                    _ollama_tool_call(c, f"{loc}.tool_calls[{j}]", tool_names) for j, c in enumerate(calls)
                ]
            out.append(item)
        elif role == "tool":
            item = {"role": "tool", "content": _content(msg.get("content"), f"{loc}.content", None)}
            call_id = msg.get("tool_call_id")
            if isinstance(call_id, str):
                item["tool_call_id"] = call_id
                if call_id in tool_names:
                    item["tool_name"] = tool_names[call_id]
            out.append(item)
        else:
            raise _bad(
                f"{loc}.role", f"unknown role {role!r}; use system, developer, user, assistant or tool"
            )
    return out


def _ollama_tool_call(call: Any, loc: str, tool_names: dict[str, str]) -> dict[str, Any]:
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        raise _bad(loc, 'expected a tool call like {"id", "type": "function", "function": {...}}')
    fn = call["function"]
    name = fn.get("name")
    if not isinstance(name, str):
        raise _bad(f"{loc}.function.name", "expected the function name")
    out: dict[str, Any] = {
        "function": {
            "name": name,
            "arguments": _arguments_object(fn.get("arguments"), f"{loc}.function.arguments"),
        }
    }
    call_id = call.get("id")
    if isinstance(call_id, str):
        out["id"] = call_id
        tool_names[call_id] = name
    return out


def _tools(params: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    tools = params.get("tools")
    choice = params.get("tool_choice")
    if not tools or choice == "none":
        return None
    if choice not in (None, "auto"):
        # Ollama has no way to force a tool call; pretending would silently change the contract.
        raise _bad("$.tool_choice", 'Ollama cannot force a tool call: use tool_choice "auto" or "none"')
    if not isinstance(tools, list):
        raise _bad("$.tools", "expected a list of tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        loc = f"$.tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise _bad(f"{loc}.type", "only function tools are supported by Ollama")
        fn = tool.get("function")
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise _bad(f"{loc}.function.name", "expected the function name")
        spec: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description") is not None:
            spec["description"] = fn["description"]
        spec["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": spec})
    return out


def chat_request(
    params: Mapping[str, Any], keep_alive: str | int | None, provider_type: str
) -> dict[str, Any]:
    """The ``/api/chat`` body for an OpenAI chat-completions request."""
    _reject_unsupported(params, provider_type)
    body = _common(params, keep_alive, stream=bool(params.get("stream")))
    body["messages"] = _chat_messages(params.get("messages"))
    tools = _tools(params)
    if tools is not None:
        body["tools"] = tools
    return body


def openai_tool_calls(calls: list[Any], start: int = 0) -> list[dict[str, Any]]:
    """Ollama tool calls -> OpenAI's, with arguments as a JSON string and an id each."""
    out = []
    for offset, call in enumerate(calls):
        fn = call.get("function") or {}
        args = fn.get("arguments")
        out.append(
            {
                "index": start + offset,
                "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": fn.get("name", ""),
                    "arguments": args if isinstance(args, str) else orjson.dumps(args or {}).decode(),
                },
            }
        )
    return out


def finish_reason(done_reason: str | None, saw_tool_calls: bool) -> str:
    # Ollama says "stop" after a tool call too; OpenAI clients look for "tool_calls".
    if done_reason == "length":
        return "length"
    if saw_tool_calls:
        return "tool_calls"
    return "stop"


def usage_of(final: Mapping[str, Any]) -> dict[str, int]:
    prompt = final.get("prompt_eval_count") or 0
    completion = final.get("eval_count") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_response(data: Mapping[str, Any], model: str) -> dict[str, Any]:
    message = data.get("message") or {}
    calls = message.get("tool_calls") or []
    content = message.get("content") or ""
    out_message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if calls:
        tool_calls = openai_tool_calls(calls)
        for call in tool_calls:
            del call["index"]  # index belongs to stream deltas only
        out_message["tool_calls"] = tool_calls
    if message.get("thinking"):
        out_message["reasoning_content"] = message["thinking"]
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": out_message,
                "finish_reason": finish_reason(data.get("done_reason"), bool(calls)),
                "logprobs": None,
            }
        ],
        "usage": usage_of(data),
    }


def chat_chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


# --- completions ------------------------------------------------------------------------------


def completion_request(
    params: Mapping[str, Any], keep_alive: str | int | None, raw_default: bool, provider_type: str
) -> dict[str, Any]:
    """The ``/api/generate`` body for an OpenAI (legacy) completions request."""
    _reject_unsupported(params, provider_type)
    prompt = params.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad(
            "$.prompt",
            f"{provider_type} takes one prompt string per request "
            "(lists of prompts and token ids are not supported)",
        )
    body = _common(params, keep_alive, stream=bool(params.get("stream")))
    body["prompt"] = prompt
    suffix = params.get("suffix")
    if suffix is not None:
        body["suffix"] = suffix
    for name in ("system", "template", "images"):
        if name in params:
            body[name] = params[name]
    raw = params.get("raw", raw_default)
    # Raw mode skips the template, and the template is what places a suffix; Ollama also
    # refuses raw with a system prompt or template. A default of raw yields to those.
    explicit = "raw" in params
    if raw and (explicit or (suffix is None and "system" not in body and "template" not in body)):
        body["raw"] = True
    return body


def completion_response(data: Mapping[str, Any], model: str) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": data.get("response") or "",
                "finish_reason": finish_reason(data.get("done_reason"), False),
                "logprobs": None,
            }
        ],
        "usage": usage_of(data),
    }


def completion_chunk(
    cid: str, created: int, model: str, text: str, finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


# --- embeddings -------------------------------------------------------------------------------


def embeddings_request(params: Mapping[str, Any], keep_alive: str | int | None) -> dict[str, Any]:
    """The ``/api/embed`` body for an OpenAI embeddings request."""
    inp = params.get("input")
    if isinstance(inp, list):
        for i, item in enumerate(inp):
            if not isinstance(item, str):
                raise _bad(
                    f"$.input[{i}]",
                    "Ollama embeds text only: expected a string (token ids are not supported)",
                )
    elif not isinstance(inp, str):
        raise _bad("$.input", "expected a string or a list of strings")
    encoding = params.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise _bad("$.encoding_format", 'expected "float" or "base64"')
    body: dict[str, Any] = {"model": params["model"], "input": inp}
    ka = params.get("keep_alive", keep_alive)
    if ka is not None:
        body["keep_alive"] = ka
    if params.get("dimensions") is not None:
        body["dimensions"] = params["dimensions"]
    if "truncate" in params:
        body["truncate"] = params["truncate"]
    if isinstance(params.get("options"), Mapping):
        body["options"] = params["options"]
    return body


def embeddings_response(data: Mapping[str, Any], model: str, encoding_format: str | None) -> dict[str, Any]:
    vectors = data.get("embeddings")
    if not isinstance(vectors, list):
        raise ValueError("no embeddings in the answer")
    items = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if encoding_format == "base64":
            # OpenAI's base64 form: little-endian float32 bytes.
            packed = array("f", vector)
            if sys.byteorder != "little":  # pragma: no cover - no big-endian CI here
                packed.byteswap()
            value = base64.b64encode(packed.tobytes()).decode()
        items.append({"object": "embedding", "index": i, "embedding": value})
    tokens = data.get("prompt_eval_count") or 0
    return {
        "object": "list",
        "data": items,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
