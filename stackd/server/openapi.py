"""``GET /v1/openapi.json``: OpenAPI 3.1, built once at startup from the app's own route table
and each route's :class:`~stackd.server.route_docs.RouteDoc`.

Every route the app serves is in the document (a route without a declaration stops the
server at startup, naming it), and nothing else is: an API the config does not serve has no
routes, hence no operations.
"""

from __future__ import annotations

import re
import typing
from http import HTTPStatus
from typing import Any

import attrs
import orjson
from aiohttp import web

import stackd
from stackd.apis.models import ResourceId
from stackd.apis.responses import ErrorBody
from stackd.schema import Schemas
from stackd.server.keys import CONFIG, OPENAPI
from stackd.server.route_docs import RouteDoc, doc_of, documented, is_outside_api

__all__ = ["UndocumentedRoute", "build_document", "openapi_json", "operations"]

_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}, "required": True}},
    405: {"Allow": {"description": "the methods the path takes", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds until the quota window resets", "schema": {"type": "string"}}},
}
_REQUEST_ID_HEADER = {
    "X-Request-ID": {"description": "the request's id (the client's X-Request-ID when sane, else a new one)",
                     "schema": {"type": "string"}, "required": True},
}
_WHEN: dict[int, str] = {
    400: "bad JSON, a missing or wrong field or query parameter (errors[] names each place)",
    401: "auth is on and the bearer token is missing or invalid",
    403: "a route policy or the access policy denies the caller",
    404: "unknown or hidden model, shield, provider or stored record",
    408: "the body did not arrive within server.body_timeout",
    409: "the identifier is registered with another provider",
    413: "the body is over server.max_body_bytes",
    415: "the body is not declared as JSON, or its Content-Encoding is not supported",
    429: "quota exceeded (Retry-After says when it resets)",
    501: "the provider does not implement this call, or the API is not installed",
    502: "the upstream gave an answer stackd cannot use",
    503: "the upstream is down, the stack is loading or shutting down, or a store is down",
    504: "the upstream did not answer in time",
}


class UndocumentedRoute(TypeError):
    """A route was added without :func:`~stackd.server.route_docs.documented`."""


@attrs.frozen
class Operation:
    method: str
    path: str
    doc: RouteDoc


def operations(app: web.Application) -> list[Operation]:
    """Every (method, path) the app routes, with its declaration; raises for one without."""
    found: list[Operation] = []
    missing: list[str] = []
    for resource in app.router.resources():
        info = resource.get_info()
        raw = info.get("path") or info.get("formatter")
        if not raw:
            continue
        path = _PARAM.sub(r"{\1}", raw)
        for route in resource:
            if route.method in ("HEAD", "*") or is_outside_api(route.handler):
                continue
            doc = doc_of(route.handler)
            if doc is None:
                missing.append(f"{route.method} {raw}")
            else:
                found.append(Operation(route.method, path, doc))
    if missing:
        raise UndocumentedRoute("routes without an OpenAPI declaration (add @documented(...) beside the route, "
                                "stackd.server.route_docs): " + ", ".join(missing))
    return found


def _operation_id(method: str, path: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", path)
    return "_".join([method.lower(), *words])


def _error(status: int, error_ref: dict[str, Any]) -> dict[str, Any]:
    reason = HTTPStatus(status).phrase
    when = _WHEN.get(status)
    return {
        "description": f"{reason}: {when}" if when else reason,
        "headers": {**_REQUEST_ID_HEADER, **_ERROR_HEADERS.get(status, {})},
        "content": {"application/json": {"schema": error_ref}},
    }


def _operation(op: Operation, schemas: Schemas, error_ref: dict[str, Any], secured: bool) -> dict[str, Any]:
    doc = op.doc
    out: dict[str, Any] = {"operationId": _operation_id(op.method, op.path), "summary": doc.summary,
                           "tags": [doc.tag]}
    params: list[dict[str, Any]] = [
        # Every path parameter is a resource id (a model, shield, provider or stored completion).
        {"name": name, "in": "path", "required": True, "schema": schemas.schema(ResourceId)}
        for name in _PARAM.findall(op.path)
    ]
    if doc.query is not None:
        hints = typing.get_type_hints(doc.query, include_extras=True)
        params += [
            {"name": field.alias or field.name, "in": "query", "required": field.default is attrs.NOTHING,
             "schema": _query_schema(schemas.schema(hints[field.name]))}
            for field in attrs.fields(doc.query)
        ]
    if params:
        out["parameters"] = params
    if doc.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas.schema(doc.body)}}}
    answer: dict[str, Any] = {"schema": schemas.schema(doc.answer) if doc.answer is not None else {"type": "null"}}
    ok: dict[str, Any] = {"description": "OK", "headers": dict(_REQUEST_ID_HEADER),
                          "content": {"application/json": answer}}
    if doc.stream is not None:
        ok["description"] = "OK; with \"stream\": true, server-sent events (data: <event JSON>)"
        # In OpenAPI 3.1 an event stream's schema describes one event (as schemathesis and 3.2's
        # itemSchema read it); its data is JSON text, whose shape contentSchema gives.
        ok["content"]["text/event-stream"] = {"schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": schemas.schema(doc.stream),
                         "description": "one event as JSON; OpenAI routes end with the text [DONE]"},
            },
        }}
    responses: dict[str, Any] = {"200": ok}
    for status in sorted(doc.errors):
        responses[str(status)] = _error(status, error_ref)
    responses["default"] = {**_error(500, error_ref), "description": "any other error, in the same shape"}
    out["responses"] = responses
    if secured and 401 not in doc.errors:
        out["security"] = []  # a public route
    return out


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # A query value is never null: "absent" is how a client leaves it out.
    options = schema.get("anyOf")
    if options is not None:
        rest = [o for o in options if o != {"type": "null"}]
        return rest[0] if len(rest) == 1 else {"anyOf": rest}
    return schema


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` as configured."""
    schemas = Schemas()
    error_ref = schemas.schema(ErrorBody)
    secured = app[CONFIG].run.server.auth is not None
    paths: dict[str, dict[str, Any]] = {}
    for op in operations(app):
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas, error_ref, secured)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "stackd",
            "version": stackd.__version__,
            "description": "Llama Stack 0.2.x and OpenAI-compatible API, as this server is configured. "
                           "Every error body is ErrorBody.",
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.components.items()))},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


async def build_on_startup(app: web.Application) -> None:
    """``on_startup``: the document is built once, so a route without a declaration stops the start."""
    app[OPENAPI] = orjson.dumps(build_document(app))


@documented("This API as an OpenAPI 3.1 document", answer=dict[str, Any])
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
