"""The bodies the server writes are exactly the classes of stackd.apis.responses: every field the
server sends is declared (so the client drops nothing) and every body structures. The same classes
are the OpenAPI document's answers (tests/test_openapi_fuzz.py holds live answers to it); the last
tests here check that one class is precise for the document and lenient for the client.

The hot inference routes build their bodies as dicts for speed; this is what keeps those dicts
and the shared classes one definition.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from stackd.apis import responses as r
from stackd.convert import converter, structure, unknown_keys
from stackd.errors import BadRequest
from stackd.schema import Schemas

__all__: list[str] = []

Client = TestClient[web.Request, web.Application]
USER = [{"role": "user", "content": "one two three"}]


def check(body: Any, cls: Any) -> None:
    assert unknown_keys(body, cls) == [], f"{cls}: the server sends fields the class does not declare"
    converter.structure(body, cls)


async def json_of(client: Client, method: str, path: str, body: Any = None) -> Any:
    resp = await client.request(method, path, json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def events_of(client: Client, path: str, body: Any) -> list[Any]:
    resp = await client.post(path, json={**body, "stream": True})
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    frames = [f[6:] for f in text.split("\n\n") if f.startswith("data: ")]
    return [orjson.loads(f) for f in frames if f != "[DONE]"]


async def test_meta_bodies(client: Client) -> None:
    check(await json_of(client, "GET", "/v1/health"), r.Health)
    check(await json_of(client, "GET", "/v1/version"), r.VersionInfo)
    for item in (await json_of(client, "GET", "/v1/providers"))["data"]:
        check(item, r.ProviderInfo)
    for item in (await json_of(client, "GET", "/v1/inspect/routes"))["data"]:
        check(item, r.RouteInfo)


async def test_native_bodies(client: Client) -> None:
    chat = {"model_id": "echo-1", "messages": USER}
    check(await json_of(client, "POST", "/v1/inference/chat-completion", chat), r.ChatCompletionResponse)
    for event in await events_of(client, "/v1/inference/chat-completion", chat):
        check(event, r.ChatStreamChunk)
    completion = {"model_id": "echo-1", "content": "a b"}
    check(await json_of(client, "POST", "/v1/inference/completion", completion), r.CompletionResponse)
    for event in await events_of(client, "/v1/inference/completion", completion):
        check(event, r.CompletionStreamChunk)
    embed = {"model_id": "echo-embed", "contents": ["x"]}
    check(await json_of(client, "POST", "/v1/inference/embeddings", embed), r.EmbeddingsResponse)


async def test_openai_and_stored_bodies(client: Client) -> None:
    chat = {"model": "echo-1", "messages": USER}
    answer = await json_of(client, "POST", "/v1/chat/completions", chat)
    check(answer, r.ChatCompletion)
    for event in await events_of(client, "/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}}):
        check(event, r.ChatCompletionChunk)
    completion = {"model": "echo-1", "prompt": "a b"}
    check(await json_of(client, "POST", "/v1/completions", completion), r.Completion)
    for event in await events_of(client, "/v1/completions", completion):
        check(event, r.Completion)
    check(await json_of(client, "POST", "/v1/embeddings", {"model": "echo-embed", "input": "x"}), r.EmbeddingList)

    deadline = time.monotonic() + 30
    while not (page := await json_of(client, "GET", "/v1/chat/completions"))["data"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    check(page, r.StoredCompletionList)
    check(await json_of(client, "GET", f"/v1/chat/completions/{answer['id']}"), r.StoredChatCompletion)
    check(await json_of(client, "GET", f"/v1/chat/completions/{answer['id']}/messages"), r.StoredMessageList)


@pytest.mark.parametrize("body", [
    {"violation": None},
    {"violation": {"violation_level": "error", "user_message": "no", "metadata": {"violation_type": "S1"}}},
])
def test_shield_bodies(body: dict[str, Any]) -> None:
    # The body run-shield passes on from a provider (stackd.apis.safety.SafetyProvider's contract).
    check(body, r.RunShieldResponse)


def test_enums_are_listed_in_the_document_and_open_to_the_client() -> None:
    schemas = Schemas()
    schemas.schema(r.ChatStreamChunk)
    schemas.schema(r.RunShieldResponse)
    event = schemas.components["ChatStreamEvent"]["properties"]
    assert event["event_type"] == {"type": "string", "enum": ["start", "progress", "complete"]}
    assert event["stop_reason"]["anyOf"][0]["enum"] == ["end_of_turn", "end_of_message", "out_of_tokens"]
    level = schemas.components["SafetyViolation"]["properties"]["violation_level"]
    assert level == {"type": "string", "enum": ["info", "warn", "error"]}

    # A newer server may add a value: the client takes it as it is.
    body = {"event": {"event_type": "paused", "delta": {"type": "text", "text": "x"}, "stop_reason": "cancelled"}}
    chunk = structure(body, r.ChatStreamChunk, what="answer")
    assert (chunk.event.event_type, chunk.event.stop_reason) == ("paused", "cancelled")
    shield = structure({"violation": {"violation_level": "critical", "metadata": {}}}, r.RunShieldResponse)
    assert shield.violation is not None and shield.violation.violation_level == "critical"
    # Anything but a string is still an error, at its place.
    with pytest.raises(BadRequest) as caught:
        structure({**body, "event": {**body["event"], "event_type": 3}}, r.ChatStreamChunk, what="answer")
    assert [e.loc for e in caught.value.errors] == ["$.event.event_type"]


def test_fields_the_server_always_sends_are_required_in_the_document() -> None:
    schemas = Schemas()
    schemas.schema(r.StoredCompletionList)
    schemas.schema(r.ProviderList)
    schemas.schema(r.CompletionResponse)
    assert schemas.components["Metric"]["required"] == ["metric", "value", "unit"]
    assert schemas.components["StoredCompletionList"]["required"] == ["data", "has_more", "first_id", "last_id",
                                                                      "object"]
    assert schemas.components["ProviderInfo"]["required"] == ["api", "provider_id", "provider_type", "config",
                                                              "health"]
    # ... while the client (and code building them by hand) may leave them out.
    assert r.Metric("tokens", 3).unit is None
    page = structure({"data": [], "has_more": False}, r.StoredCompletionList, what="answer")
    assert (page.first_id, page.last_id, page.object) == ("", "", "list")
