"""Reading requests and writing JSON: parsed once, with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from stackd.errors import BadRequest, FieldError, PayloadTooLarge
from stackd.providers.spec import CallContext
from stackd.server.keys import CALLER, MAX_BODY

__all__ = ["context", "json_response", "provider_data", "read_json"]

_JSON = "application/json"


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body too large (limit {request.app[MAX_BODY]} bytes; "
            "raise server.max_body_bytes to allow more)"
        ) from None
    if not raw:
        raise BadRequest("the request needs a JSON object body", [FieldError("$", "empty body")])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                         [FieldError("$", "not valid JSON")]) from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", [FieldError("$", "expected an object")])
    return data


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON, headers=headers)


def provider_data(request: web.Request) -> dict[str, Any]:
    """The decoded ``X-LlamaStack-Provider-Data`` header of this request (never logged)."""
    raw = request.headers.get("X-LlamaStack-Provider-Data")
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the X-LlamaStack-Provider-Data header must be a JSON object",
                         [FieldError("$.headers.X-LlamaStack-Provider-Data", "not valid JSON")]) from None
    if not isinstance(data, dict):
        raise BadRequest("the X-LlamaStack-Provider-Data header must be a JSON object",
                         [FieldError("$.headers.X-LlamaStack-Provider-Data", "expected an object")])
    return data


def context(request: web.Request) -> CallContext:
    """What a provider call may know of this request: the caller and its provider data."""
    return CallContext(caller=request[CALLER], provider_data=provider_data(request))
