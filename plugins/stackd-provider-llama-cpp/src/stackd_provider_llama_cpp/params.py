"""OpenAI request bodies -> llama-cpp-python keyword arguments, as JSON for the worker process.

This runs in the provider's process, which never imports llama.cpp: what only llama.cpp can
build (a grammar) travels as a description that the worker turns into the object
(:func:`stackd_provider_llama_cpp.jobs.build_grammar`).
"""

from __future__ import annotations

from typing import Any

from stackd.errors import BadRequest, FieldError
from stackd_provider_llama_cpp.config import ModelConfig

__all__ = ["chat_kwargs", "completion_kwargs", "include_usage"]

# Sampling fields llama-cpp-python takes under the OpenAI name (top_k, min_p, repeat_penalty
# are the llama.cpp extensions that vLLM and llama.cpp's server also accept).
_SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "mirostat_mode",
    "mirostat_tau",
    "mirostat_eta",
)


def _common(params: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    n = params.get("n")
    if n not in (None, 1):
        raise BadRequest(
            f"n={n!r} is not supported by inline::llama-cpp (model {cfg.model_id!r}): "
            "it generates one choice per request; send n=1 or several requests",
            [FieldError("$.n", "must be 1")],
        )
    kwargs: dict[str, Any] = {k: params[k] for k in _SAMPLING if params.get(k) is not None}
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens") or cfg.max_tokens
    kwargs["max_tokens"] = max_tokens
    stop = params.get("stop")
    if stop:
        kwargs["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("logit_bias"):
        # Token ids as strings: the frame is JSON; the worker turns them back into ints.
        kwargs["logit_bias"] = {str(int(k)): float(v) for k, v in params["logit_bias"].items()}
    kwargs["model"] = params.get("model")
    kwargs["stream"] = bool(params.get("stream"))
    return kwargs


def _need_logprobs(cfg: ModelConfig) -> None:
    if not cfg.logprobs:
        raise BadRequest(
            f"logprobs are off for model {cfg.model_id!r} of inline::llama-cpp; set `logprobs: true` "
            "for it under the provider's config.models (llama.cpp then keeps logits for every position)",
            [FieldError("$.logprobs", "not enabled for this model")],
        )


def chat_kwargs(params: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    kwargs = _common(params, cfg)
    kwargs["messages"] = params["messages"]
    for key in ("tools", "tool_choice", "functions", "function_call"):
        if params.get(key) is not None:
            kwargs[key] = params[key]
    if kwargs.get("tool_choice") == "required":
        kwargs["tool_choice"] = _required_tool(kwargs.get("tools"))
    if params.get("logprobs"):
        _need_logprobs(cfg)
        kwargs["logprobs"] = True
        kwargs["top_logprobs"] = max(1, int(params.get("top_logprobs") or 1))
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        kwargs["response_format"] = fmt
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        # llama-cpp-python turns a json_object format's "schema" into a grammar.
        schema = (fmt.get("json_schema") or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
    return kwargs


def _required_tool(tools: Any) -> dict[str, Any]:
    # llama-cpp-python forces a call (with a grammar) only for a named function; it would take
    # "required" as "auto" and let the model answer in text.
    names = [t["function"]["name"] for t in tools or () if isinstance(t, dict) and isinstance(t.get("function"), dict)
             and isinstance(t["function"].get("name"), str)]
    if len(names) != 1:
        raise BadRequest(
            f"tool_choice 'required' with {len(names)} tools is not supported by inline::llama-cpp: it can force "
            "a call to one function only; send one tool, or tool_choice {type: function, function: {name: ...}}",
            [FieldError("$.tool_choice", "'required' needs exactly one tool with inline::llama-cpp")],
        )
    return {"type": "function", "function": {"name": names[0]}}


def completion_kwargs(params: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    kwargs = _common(params, cfg)
    prompt = params.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if not (
        isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt))
    ):
        raise BadRequest(
            "inline::llama-cpp takes one prompt per completion request: a string or a list of token ids",
            [FieldError("$.prompt", "expected a string or a list of token ids")],
        )
    kwargs["prompt"] = prompt
    for key in ("suffix", "echo"):
        if params.get(key) is not None:
            kwargs[key] = params[key]
    # create_completion has no response_format (create_chat_completion does): without a grammar
    # the format would be ignored and the answer would not be JSON.
    grammar = _completion_grammar(params.get("response_format"))
    if grammar is not None:
        kwargs["grammar"] = grammar
    if params.get("logprobs") is not None:
        _need_logprobs(cfg)
        kwargs["logprobs"] = int(params["logprobs"])
    return kwargs


def _completion_grammar(fmt: Any) -> dict[str, Any] | None:
    """``{"gbnf": "json"}`` (any JSON value) or ``{"json_schema": {...}}``; the worker compiles it
    and answers 400 at ``$.response_format.json_schema.schema`` when the schema cannot be."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        schema = fmt.get("schema")
    elif kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
    else:
        raise BadRequest(
            f"response_format type {kind!r} is not supported by inline::llama-cpp; "
            "use text, json_object or json_schema",
            [FieldError("$.response_format.type", "expected text, json_object or json_schema")],
        )
    return {"json_schema": schema} if schema else {"gbnf": "json"}


def include_usage(params: dict[str, Any]) -> bool:
    options = params.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
