"""``GET /v1/openapi.json``: generated from the route table and the declared types, valid
OpenAPI 3.1, every route in it, bounds and tagged unions where the types declare them."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import attrs
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate

import stackd.apis.models
import stackd.apis.native.types
import stackd.apis.requests
import stackd.apis.responses
from stackd.apis import openai as openai_api
from stackd.convert import Check
from stackd.loading import load_config
from stackd.schema import Schemas
from stackd.server import create_app
from stackd.server.openapi import UndocumentedRoute, operations
from stackd.server.route_docs import is_outside_api

__all__: list[str] = []


async def _document(path: Path) -> tuple[dict[str, Any], web.Application]:
    app = create_app(load_config(path))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/v1/openapi.json")
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        assert resp.headers["X-Request-ID"]
        return await resp.json(), app


async def test_the_document_is_valid_openapi_3_1_and_holds_every_route(echo_config: Path) -> None:
    doc, app = await _document(echo_config)
    validate(doc)  # openapi-spec-validator: the 3.1 schema, $refs resolve, path parameters declared
    assert doc["openapi"] == "3.1.0"
    served = set()
    outside = set()
    for resource in app.router.resources():
        info = resource.get_info()
        raw = info.get("path") or info.get("formatter")
        for route in resource:
            if route.method != "HEAD":
                (outside if is_outside_api(route.handler) else served).add(
                    (route.method.lower(), raw.replace(":.+", "")))
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    assert outside == {("get", "/metrics")}  # left out on purpose: Prometheus' text format
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


async def test_a_route_without_a_declaration_stops_the_start(echo_config: Path) -> None:
    app = create_app(load_config(echo_config))

    async def secret_route(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/secret", secret_route)
    with pytest.raises(UndocumentedRoute, match=r"GET /v1/secret"):
        operations(app)
    with pytest.raises(UndocumentedRoute):
        await TestServer(app, host="127.0.0.1").start_server()


async def test_errors_streams_bounds_and_unions(echo_config: Path) -> None:
    doc, _ = await _document(echo_config)
    schemas = doc["components"]["schemas"]
    chat = doc["paths"]["/v1/inference/chat-completion"]["post"]
    assert {"400", "401", "403", "404", "413", "415", "429", "502", "503", "504", "default"} <= set(chat["responses"])
    assert chat["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert chat["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    ok = chat["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    event = ok["text/event-stream"]["schema"]["properties"]["data"]
    assert event["contentMediaType"] == "application/json"
    assert event["contentSchema"]["anyOf"][1] == {"$ref": "#/components/schemas/StreamError"}
    assert schemas["ErrorBody"]["required"] == ["error"]
    # 409 where registering can conflict, and only there among the model routes.
    assert "409" in doc["paths"]["/v1/models"]["post"]["responses"]
    assert "409" not in doc["paths"]["/v1/models"]["get"]["responses"]
    # Tagged unions: oneOf + discriminator, the tag required in each member.
    messages = schemas["ChatCompletionRequest"]["properties"]["messages"]["items"]
    assert messages["discriminator"]["propertyName"] == "role"
    assert set(messages["discriminator"]["mapping"]) == {"user", "system", "assistant", "tool"}
    assert "role" in schemas["UserMessage"]["required"]
    strategy = schemas["SamplingParams"]["properties"]["strategy"]
    assert set(strategy["discriminator"]["mapping"]) == {"greedy", "top_p", "top_k"}
    # Bounds from Check annotations.
    top_p = schemas["TopPStrategy"]["properties"]["top_p"]["anyOf"][0]
    assert top_p == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    model_id = schemas["RegisterModelRequest"]["properties"]["model_id"]
    assert model_id["maxLength"] == stackd.apis.models.MAX_ID_CHARS and model_id["minLength"] == 1
    listing = {p["name"]: p for p in doc["paths"]["/v1/chat/completions"]["get"]["parameters"]}
    assert listing["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert listing["order"]["schema"] == {"type": "string", "enum": ["asc", "desc"]}
    # Public routes need no token when auth is on; the document has no security without auth.
    assert "security" not in doc


async def test_with_auth_the_document_says_bearer_and_health_stays_public(write_config: Callable[..., Path]) -> None:
    config = write_config(server="  auth:\n    provider_type: custom\n    config: {endpoint: 'http://127.0.0.1:9/auth'}\n"
                                 "    public_paths: [/v1/openapi.json]\n")
    doc, _ = await _document(config)
    validate(doc)
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/v1/health"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/models"]["get"]


async def test_only_the_configured_apis_are_in_the_document(write_config: Callable[..., Path]) -> None:
    """Routes follow the app: a safety route answers 501 without a safety provider, and is
    documented with that status."""
    doc, app = await _document(write_config())
    assert "501" in doc["paths"]["/v1/safety/run-shield"]["post"]["responses"]
    assert len(doc["paths"]) == len({op.path for op in operations(app)})


def _checks() -> list[tuple[str, Check, Any]]:
    found = []
    for module in (stackd.apis.models, stackd.apis.native.types, stackd.apis.requests,
                   stackd.apis.responses):
        candidates = [v for v in vars(module).values() if get_origin(v) is Annotated]
        for cls in vars(module).values():
            if isinstance(cls, type) and attrs.has(cls):
                candidates += typing.get_type_hints(cls, include_extras=True).values()
        for tp in candidates:
            stack = [tp]
            while stack:
                t = stack.pop()
                if get_origin(t) is Annotated:
                    for marker in t.__metadata__:
                        if isinstance(marker, Check) and marker.schema:
                            found.append((f"{module.__name__}:{marker.wanted}", marker, t.__origin__))
                    stack.append(t.__origin__)
                else:
                    stack.extend(get_args(t))
    unique = {(name, id(check)): (name, check, base) for name, check, base in found}
    return list(unique.values())


CHECKS = _checks()


def test_every_bounded_check_is_found() -> None:
    assert len(CHECKS) >= 7, CHECKS


@pytest.mark.parametrize(("name", "check", "base"), CHECKS, ids=[c[0] for c in CHECKS])
@given(data=st.data())
def test_a_check_and_its_schema_agree(name: str, check: Check, base: Any, data: st.DataObject) -> None:
    """The bound the document states is the bound the server applies: same verdict on every value
    (values near the bounds are drawn most often)."""
    if base is int:
        value: Any = data.draw(st.integers(-3, 3) | st.integers(998, 1002) | st.integers(9_998, 10_002)
                               | st.integers())
    elif base is float:
        value = data.draw(st.sampled_from([0.0, -0.0, 1e-300, 1.0, 1.0000001, 0.999]) | st.floats(allow_nan=False,
                                                                                                allow_infinity=False))
    elif base is str:
        value = data.draw(st.text(max_size=300) | st.sampled_from(["", " a", "a ", "a\x00b", "a" * 256, "a" * 257,
                                                                   "\u3000x", "x\x85", "model/x:1"]))
    else:
        value = data.draw(st.lists(st.integers(), max_size=3))
    schema = {"type": {int: "integer", float: "number", str: "string"}.get(base, "array"), **check.schema}
    by_schema = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert check.test(value) == by_schema, (value, schema)


def test_openai_request_shapes_declare_every_checked_field() -> None:
    """The OpenAI bodies are checked by hand (stackd.apis.openai); their documented shapes list
    every field those checks look at, with the same JSON type."""
    json_type = {"an integer": "integer", "a number": "number", "an object": "object", "a list": "array",
                 "a string": "string"}
    schemas = Schemas()
    for cls in (stackd.apis.requests.OpenAIChatRequest, stackd.apis.requests.OpenAICompletionRequest):
        schemas.schema(cls)
        props = schemas.components[cls.__name__]["properties"]
        for field, kinds in openai_api._FIELD_TYPES.items():
            if field == "dimensions":
                continue
            assert field in props, (cls.__name__, field)
            declared = {o.get("type") for o in props[field].get("anyOf", [props[field]])} - {"null"}
            assert declared == {json_type[k] for k in kinds}, (field, declared)
