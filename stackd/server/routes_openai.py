"""OpenAI-compatible routes, at /v1/... and again at /v1/openai/v1/... (the Llama Stack 0.2.x prefix).

The body is parsed once and handed to the provider as a dict with only ``model`` rewritten,
so every field the client sent reaches the upstream, and every field it answered reaches
the client.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stackd.errors import BadRequest, FieldError
from stackd.server.http import json_response, read_json
from stackd.server.keys import STACK, context
from stackd.server.sse import stream_sse

__all__ = ["routes", "served"]

routes = web.RouteTableDef()
PREFIXES = ("/v1", "/v1/openai/v1")


def served(api: str) -> Any:
    """Tag a handler with the API it serves, for /v1/inspect/routes."""
    def mark(handler: Any) -> Any:
        handler.stackd_api = api
        return handler

    return mark


def _check(body: dict[str, Any], field: str, kind: type | tuple[type, ...], what: str) -> None:
    value = body.get(field)
    if value is None:
        raise BadRequest(f"{field} is required", [FieldError(f"$.{field}", "required field missing")])
    if not isinstance(value, kind):
        raise BadRequest(f"{field} must be {what}", [FieldError(f"$.{field}", f"expected {what}")])


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
    stream = _stream_flag(body)
    result = await request.app[STACK].inference.openai_chat_completion(body, context(request))
    return await _answer(request, result, stream)


@served("inference")
async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _check(body, "model", str, "a string")
    _check(body, "prompt", (str, list), "a string or a list")
    stream = _stream_flag(body)
    result = await request.app[STACK].inference.openai_completion(body, context(request))
    return await _answer(request, result, stream)


@served("inference")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    _check(body, "model", str, "a string")
    _check(body, "input", (str, list), "a string or a list of strings")
    result = await request.app[STACK].inference.openai_embeddings(body, context(request))
    return json_response(result)


@served("inference")
async def list_chat_completions(request: web.Request) -> web.Response:
    store = _store(request)
    q = request.query
    limit_raw = q.get("limit", "20")
    try:
        limit = int(limit_raw)
    except ValueError:
        raise BadRequest("limit must be an integer", [FieldError("$.query.limit", "expected an integer")]) from None
    result = await store.list(after=q.get("after"), limit=limit, model=q.get("model"), order=q.get("order", "desc"))
    return json_response(result)


@served("inference")
async def get_chat_completion(request: web.Request) -> web.Response:
    return json_response(await _store(request).get(request.match_info["completion_id"]))


@served("inference")
async def get_chat_completion_messages(request: web.Request) -> web.Response:
    q = request.query
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        raise BadRequest("limit must be an integer", [FieldError("$.query.limit", "expected an integer")]) from None
    result = await _store(request).messages(
        request.match_info["completion_id"], after=q.get("after"), limit=limit, order=q.get("order", "asc")
    )
    return json_response(result)


def _store(request: web.Request) -> Any:
    store = request.app[STACK].inference_store
    if store is None:
        from stackd.errors import NotImplementedByProvider

        raise NotImplementedByProvider("stored chat completions are not available: no inference provider "
                                       "is configured")
    return store


for _prefix in PREFIXES:
    routes.post(f"{_prefix}/chat/completions")(chat_completions)
    routes.get(f"{_prefix}/chat/completions")(list_chat_completions)
    routes.get(f"{_prefix}/chat/completions/{{completion_id}}")(get_chat_completion)
    routes.get(f"{_prefix}/chat/completions/{{completion_id}}/messages")(get_chat_completion_messages)
    routes.post(f"{_prefix}/completions")(completions)
    routes.post(f"{_prefix}/embeddings")(embeddings)
