"""The OpenAI-compatible inference calls: the few checks every provider relies on, then the router.

The body is parsed once and handed to the provider as a dict with only ``model`` rewritten,
so every field the client sent reaches the upstream, and every field it answered reaches the
client. Only the shape providers rely on is checked here, once, so an in-process provider
never meets ``max_tokens: "ten"`` (that would be a 500) whichever way the call arrived.
"""

from __future__ import annotations

from typing import Any

from stackd.apis.context import CallContext
from stackd.apis.inference import InferenceRouting, OpenAIResult
from stackd.errors import BadRequest, FieldError

__all__ = ["chat_completions", "completions", "embeddings", "stream_flag"]

_INT = "an integer"
_NUMBER = "a number"
_OBJECT = "an object"
_LIST = "a list"
_STRING = "a string"
# The standard OpenAI fields whose type every provider relies on.
_FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "max_tokens": (_INT,), "max_completion_tokens": (_INT,), "n": (_INT,), "seed": (_INT,),
    "top_logprobs": (_INT,), "dimensions": (_INT,),
    "temperature": (_NUMBER,), "top_p": (_NUMBER,), "frequency_penalty": (_NUMBER,),
    "presence_penalty": (_NUMBER,),
    "stream_options": (_OBJECT,), "response_format": (_OBJECT,), "logit_bias": (_OBJECT,),
    "tools": (_LIST,), "stop": (_STRING, _LIST), "user": (_STRING,),
}


def _is(value: Any, what: str) -> bool:
    if what == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if what == _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if what == _OBJECT:
        return isinstance(value, dict)
    if what == _LIST:
        return isinstance(value, list)
    return isinstance(value, str)


def _require(body: dict[str, Any], field: str, kinds: tuple[str, ...], what: str | None = None) -> None:
    value = body.get(field)
    if value is None:
        raise BadRequest(f"{field} is required", [FieldError(f"$.{field}", "required field missing")])
    if not any(_is(value, k) for k in kinds):
        what = what or " or ".join(kinds)
        raise BadRequest(f"{field} must be {what}", [FieldError(f"$.{field}", f"expected {what}")])


def _check_types(body: dict[str, Any]) -> None:
    bad = [
        FieldError(f"$.{name}", f"expected {' or '.join(kinds)}")
        for name, kinds in _FIELD_TYPES.items()
        if body.get(name) is not None and not any(_is(body[name], k) for k in kinds)
    ]
    if bad:
        raise BadRequest("; ".join(f"{e.loc[2:]}: {e.msg}" for e in bad), bad)


def stream_flag(body: dict[str, Any]) -> bool:
    """``stream`` as the OpenAI API has it: true, false, or absent (null)."""
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", [FieldError("$.stream", "expected true or false")])
    return stream


def check_chat(body: dict[str, Any]) -> None:
    _require(body, "model", (_STRING,))
    _require(body, "messages", (_LIST,), "a list of messages")
    if not body["messages"]:
        raise BadRequest("messages must not be empty", [FieldError("$.messages", "expected at least one message")])
    bad = [FieldError(f"$.messages[{i}]", "expected a message object with a string 'role'")
           for i, m in enumerate(body["messages"]) if not isinstance(m, dict) or not isinstance(m.get("role"), str)]
    if bad:
        raise BadRequest("every message must be an object with a string 'role'", bad)
    _check_types(body)
    stream_flag(body)


async def chat_completions(inference: InferenceRouting, body: dict[str, Any], ctx: CallContext) -> OpenAIResult:
    """``POST /v1/chat/completions``; stored in the inference store when one is configured."""
    check_chat(body)
    return await inference.openai_chat_completion(body, ctx)


async def completions(inference: InferenceRouting, body: dict[str, Any], ctx: CallContext) -> OpenAIResult:
    """``POST /v1/completions``."""
    _require(body, "model", (_STRING,))
    _require(body, "prompt", (_STRING, _LIST), "a string or a list")
    _check_types(body)
    stream_flag(body)
    return await inference.openai_completion(body, ctx)


async def embeddings(inference: InferenceRouting, body: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """``POST /v1/embeddings``."""
    _require(body, "model", (_STRING,))
    _require(body, "input", (_STRING, _LIST), "a string or a list of strings")
    # OpenAI answers 400 for an empty batch; passed on, some providers would answer 200 with no data.
    if body["input"] == []:
        raise BadRequest("input must not be an empty list; send at least one string",
                         [FieldError("$.input", "expected at least one input")])
    _check_types(body)
    return await inference.openai_embeddings(body, ctx)
