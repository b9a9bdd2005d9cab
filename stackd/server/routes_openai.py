"""OpenAI-compatible routes, at /v1/... and again at /v1/openai/v1/... (the Llama Stack 0.2.x prefix).

The body is parsed once and handed to the provider as a dict with only ``model`` rewritten,
so every field the client sent reaches the upstream, and every field it answered reaches
the client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from stackd.errors import BadRequest, FieldError, NotImplementedByProvider
from stackd.inference_store import InferenceStoreWriter
from stackd.inference_store.api import DEFAULT_LIMIT
from stackd.server.http import context, json_response, read_json
from stackd.server.keys import STACK
from stackd.server.sse import stream_sse

__all__ = ["routes", "served"]

routes = web.RouteTableDef()
PREFIXES = ("/v1", "/v1/openai/v1")


H = TypeVar("H", bound=Callable[..., Any])


def served(api: str) -> Callable[[H], H]:
    """Tag a handler with the API it serves, for /v1/inspect/routes."""

    def mark(handler: H) -> H:
        handler.stackd_api = api  # type: ignore[attr-defined]
        return handler

    return mark


def _check(body: dict[str, Any], field: str, kind: type | tuple[type, ...], what: str) -> None:
    value = body.get(field)
    if value is None:
        raise BadRequest(f"{field} is required", [FieldError(f"$.{field}", "required field missing")])
    if not isinstance(value, kind):
        raise BadRequest(f"{field} must be {what}", [FieldError(f"$.{field}", f"expected {what}")])


_INT = "an integer"
_NUMBER = "a number"
_OBJECT = "an object"
# The standard OpenAI fields whose type every provider relies on. They are checked here, once,
# so that an in-process provider never meets `max_tokens: "ten"` (that would be a 500).
_FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "max_tokens": (_INT,), "max_completion_tokens": (_INT,), "n": (_INT,), "seed": (_INT,),
    "top_logprobs": (_INT,), "dimensions": (_INT,),
    "temperature": (_NUMBER,), "top_p": (_NUMBER,), "frequency_penalty": (_NUMBER,),
    "presence_penalty": (_NUMBER,),
    "stream_options": (_OBJECT,), "response_format": (_OBJECT,), "logit_bias": (_OBJECT,),
    "tools": ("a list",), "stop": ("a string", "a list"), "user": ("a string",),
}


def _is(value: Any, what: str) -> bool:
    if what == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if what == _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if what == _OBJECT:
        return isinstance(value, dict)
    if what == "a list":
        return isinstance(value, list)
    return isinstance(value, str)


def _check_types(body: dict[str, Any]) -> None:
    bad = [
        FieldError(f"$.{name}", f"expected {' or '.join(kinds)}")
        for name, kinds in _FIELD_TYPES.items()
        if body.get(name) is not None and not any(_is(body[name], k) for k in kinds)
    ]
    if bad:
        raise BadRequest("; ".join(f"{e.loc[2:]}: {e.msg}" for e in bad), bad)


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", [FieldError("$.stream", "expected true or false")])
    return stream


def _wants_done(request: web.Request) -> bool:
    # Llama Stack 0.2.x clients choke on [DONE]; they identify themselves with this header.
    return "X-LlamaStack-Client-Version" not in request.headers


async def _answer(request: web.Request, result: Any, stream: bool) -> web.StreamResponse:
    if stream and not isinstance(result, dict):
        return await stream_sse(request, result, done=_wants_done(request))
    return json_response(result)


@served("inference")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _check(body, "model", str, "a string")
    _check(body, "messages", list, "a list of messages")
    if not body["messages"]:
        raise BadRequest("messages must not be empty", [FieldError("$.messages", "expected at least one message")])
    # Only the shape every provider relies on is checked; the rest passes through untouched.
    bad = [FieldError(f"$.messages[{i}]", "expected a message object with a string 'role'")
           for i, m in enumerate(body["messages"]) if not isinstance(m, dict) or not isinstance(m.get("role"), str)]
    if bad:
        raise BadRequest("every message must be an object with a string 'role'", bad)
    _check_types(body)
    stream = _stream_flag(body)
    result = await request.app[STACK].inference.openai_chat_completion(body, context(request))
    return await _answer(request, result, stream)


@served("inference")
async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _check(body, "model", str, "a string")
    _check(body, "prompt", (str, list), "a string or a list")
    _check_types(body)
    stream = _stream_flag(body)
    result = await request.app[STACK].inference.openai_completion(body, context(request))
    return await _answer(request, result, stream)


@served("inference")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    _check(body, "model", str, "a string")
    _check(body, "input", (str, list), "a string or a list of strings")
    # OpenAI answers 400 for an empty batch; passed on, some providers would answer 200 with no data.
    if body["input"] == []:
        raise BadRequest("input must not be an empty list; send at least one string",
                         [FieldError("$.input", "expected at least one input")])
    _check_types(body)
    result = await request.app[STACK].inference.openai_embeddings(body, context(request))
    return json_response(result)


@served("inference")
async def list_chat_completions(request: web.Request) -> web.Response:
    q = request.query
    result = await _store(request).list(
        after=q.get("after"), limit=_limit(q), model=q.get("model"), order=q.get("order", "desc")
    )
    return json_response(result)


@served("inference")
async def get_chat_completion(request: web.Request) -> web.Response:
    return json_response(await _store(request).get(request.match_info["completion_id"]))


@served("inference")
async def get_chat_completion_messages(request: web.Request) -> web.Response:
    q = request.query
    result = await _store(request).messages(
        request.match_info["completion_id"], after=q.get("after"), limit=_limit(q), order=q.get("order", "asc")
    )
    return json_response(result)


def _limit(query: Mapping[str, str]) -> int:
    try:
        return int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise BadRequest("limit must be an integer", [FieldError("$.query.limit", "expected an integer")]) from None


def _store(request: web.Request) -> InferenceStoreWriter:
    store = request.app[STACK].inference_store
    if store is None:
        raise NotImplementedByProvider("stored chat completions are not available: no inference provider "
                                       "is configured; add one under providers.inference")
    return store


for _prefix in PREFIXES:
    routes.post(f"{_prefix}/chat/completions")(chat_completions)
    routes.get(f"{_prefix}/chat/completions")(list_chat_completions)
    routes.get(f"{_prefix}/chat/completions/{{completion_id}}")(get_chat_completion)
    routes.get(f"{_prefix}/chat/completions/{{completion_id}}/messages")(get_chat_completion_messages)
    routes.post(f"{_prefix}/completions")(completions)
    routes.post(f"{_prefix}/embeddings")(embeddings)
