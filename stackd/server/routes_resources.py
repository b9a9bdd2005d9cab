"""Models and shields: list, get, register, unregister. Model routes serve both clients at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web

from stackd.apis.models import Model, RegisterModelRequest, RegisterShieldRequest, Shield
from stackd.apis.requests import ResourcePageQuery
from stackd.apis.responses import ModelAnswer, ModelList, ShieldAnswer, ShieldList
from stackd.convert import structure
from stackd.errors import BadRequest, FieldError, quote_id
from stackd.server.http import json_response, read_json
from stackd.server.keys import CALLER, STACK, STARTED_AT
from stackd.server.route_docs import ID_ERRORS, documented

__all__ = ["routes", "model_json"]

routes = web.RouteTableDef()


def model_json(model: Model, created: int) -> dict[str, Any]:
    body = model.to_json()
    # OpenAI's fields beside Llama Stack's, so `openai` and `llama-stack-client` both parse it.
    body.update({"id": model.identifier, "object": "model", "created": created, "owned_by": model.provider_id})
    return body


def _created(request: web.Request) -> int:
    return int(request.app[STARTED_AT])


R = TypeVar("R", Model, Shield)

# The most items one page may ask for; a server holds at most server.max_models models anyway.
MAX_PAGE = 10_000


def _page(items: Sequence[R], query: Mapping[str, str]) -> tuple[Sequence[R], bool | None]:
    """``?limit=N&after=ID`` (OpenAI's cursor form): the page and whether more follow.

    Without either, the whole list and None: neither the openai SDK nor llama-stack-client
    pages through models, so the plain list stays whole (server.max_models bounds it).
    """
    if "limit" not in query and "after" not in query:
        return items, None
    raw = query.get("limit", str(MAX_PAGE))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"invalid limit {raw[:32]!r}: use an integer from 1 to {MAX_PAGE}, and page on with 'after'",
                         [FieldError("$.query.limit", f"expected an integer from 1 to {MAX_PAGE}")])
    start = 0
    after = query.get("after")
    if after is not None:
        ids = [item.identifier for item in items]
        if after not in ids:
            raise BadRequest(f"invalid 'after' cursor {quote_id(after)}: no listed item has this id; pass the "
                             "id of the last item of the previous page",
                             [FieldError("$.query.after", "unknown id")])
        start = ids.index(after) + 1
    return items[start : start + limit], start + limit < len(items)


@routes.get("/v1/models")
@routes.get("/v1/openai/v1/models")
@documented("The models the caller may use (OpenAI's list and Llama Stack's in one)", answer=ModelList,
            query=ResourcePageQuery, errors={400}, tag="models")
async def list_models(request: web.Request) -> web.Response:
    models = await request.app[STACK].registry.list_models(request[CALLER])
    page, has_more = _page(models, request.query)
    created = _created(request)
    body: dict[str, Any] = {"object": "list", "data": [model_json(m, created) for m in page]}
    if has_more is not None:
        body["has_more"] = has_more
    return json_response(body)


@routes.get("/v1/models/{model_id:.+}")
@routes.get("/v1/openai/v1/models/{model_id:.+}")
@documented("One model", answer=ModelAnswer, errors=ID_ERRORS, tag="models")
async def get_model(request: web.Request) -> web.Response:
    model = await request.app[STACK].registry.get_model(request.match_info["model_id"], request[CALLER])
    return json_response(model_json(model, _created(request)))


@routes.post("/v1/models")
@documented("Register a model with a provider (checked against the upstream)", answer=ModelAnswer,
            body=RegisterModelRequest, errors={404, 409, 502, 503, 504}, tag="models")
async def register_model(request: web.Request) -> web.Response:
    body: RegisterModelRequest = structure(await read_json(request), RegisterModelRequest)
    model = await request.app[STACK].registry.register_model(
        request[CALLER],
        body.model_id,
        provider_model_id=body.provider_model_id,
        provider_id=body.provider_id,
        model_type=body.model_type,
        metadata=body.metadata,
        input_shields=body.input_shields,
        output_shields=body.output_shields,
    )
    return json_response(model_json(model, _created(request)))


@routes.delete("/v1/models/{model_id:.+}")
@documented("Unregister a model", answer=None, errors=ID_ERRORS | {409}, tag="models")
async def unregister_model(request: web.Request) -> web.Response:
    await request.app[STACK].registry.unregister_model(request.match_info["model_id"], request[CALLER])
    return json_response(None)


@routes.get("/v1/shields")
@documented("The shields the caller may use", answer=ShieldList, query=ResourcePageQuery, errors={400}, tag="shields")
async def list_shields(request: web.Request) -> web.Response:
    shields = await request.app[STACK].registry.list_shields(request[CALLER])
    page, has_more = _page(shields, request.query)
    body: dict[str, Any] = {"data": [s.to_json() for s in page]}
    if has_more is not None:
        body["has_more"] = has_more
    return json_response(body)


@routes.get("/v1/shields/{shield_id:.+}")
@documented("One shield", answer=ShieldAnswer, errors=ID_ERRORS, tag="shields")
async def get_shield(request: web.Request) -> web.Response:
    shield = await request.app[STACK].registry.get_shield(request.match_info["shield_id"], request[CALLER])
    return json_response(shield.to_json())


@routes.post("/v1/shields")
@documented("Register a shield with a safety provider", answer=ShieldAnswer, body=RegisterShieldRequest,
            errors={404, 409, 502, 503, 504}, tag="shields")
async def register_shield(request: web.Request) -> web.Response:
    body: RegisterShieldRequest = structure(await read_json(request), RegisterShieldRequest)
    shield = await request.app[STACK].registry.register_shield(
        request[CALLER], body.shield_id, body.provider_shield_id, body.provider_id, body.params, body.on_failure
    )
    return json_response(shield.to_json())


@routes.delete("/v1/shields/{shield_id:.+}")
@documented("Unregister a shield", answer=None, errors=ID_ERRORS | {409}, tag="shields")
async def unregister_shield(request: web.Request) -> web.Response:
    await request.app[STACK].registry.unregister_shield(request.match_info["shield_id"], request[CALLER])
    return json_response(None)
