"""OpenAI-compatible routes, at /v1/... and again at /v1/openai/v1/... (the Llama Stack 0.2.x prefix).

The calls and their checks are :mod:`stackd.apis.openai`; this module is their HTTP side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from stackd.apis import openai
from stackd.apis.models import MAX_ID_CHARS, is_resource_id
from stackd.apis.requests import (
    ChatCompletionsPageQuery,
    MessagesPageQuery,
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbeddingsRequest,
)
from stackd.apis.responses import (
    ChatCompletion,
    ChatCompletionFrame,
    Completion,
    CompletionFrame,
    EmbeddingList,
    StoredChatCompletion,
    StoredCompletionList,
    StoredMessageList,
)
from stackd.auth.policy import owner_from_json
from stackd.config.stores import NoStoreConfig
from stackd.errors import BadRequest, FieldError, NotImplementedByProvider
from stackd.inference_store import InferenceStoreWriter
from stackd.inference_store.api import DEFAULT_LIMIT, Visible
from stackd.server.http import context, json_response, read_json
from stackd.server.keys import CALLER, STACK
from stackd.server.route_docs import CALL_ERRORS, ID_ERRORS, documented
from stackd.server.sse import stream_sse

__all__ = ["routes"]

routes = web.RouteTableDef()
PREFIXES = ("/v1", "/v1/openai/v1")


def _wants_done(request: web.Request) -> bool:
    # Llama Stack 0.2.x clients choke on [DONE]; they identify themselves with this header.
    return "X-LlamaStack-Client-Version" not in request.headers


async def _answer(request: web.Request, result: Any) -> web.StreamResponse:
    if isinstance(result, dict):
        return json_response(result)
    return await stream_sse(request, result, done=_wants_done(request))


@documented("Chat completion (OpenAI); stored when an inference store is configured", body=OpenAIChatRequest,
            answer=ChatCompletion, stream=ChatCompletionFrame, errors=CALL_ERRORS, api="inference",
            tag="openai")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await _answer(request, await openai.chat_completions(request.app[STACK].inference, body, context(request)))


@documented("Text completion (OpenAI)", body=OpenAICompletionRequest, answer=Completion,
            stream=CompletionFrame, errors=CALL_ERRORS, api="inference", tag="openai")
async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await _answer(request, await openai.completions(request.app[STACK].inference, body, context(request)))


@documented("Embeddings (OpenAI)", body=OpenAIEmbeddingsRequest, answer=EmbeddingList, errors=CALL_ERRORS,
            api="inference", tag="openai")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    return json_response(await openai.embeddings(request.app[STACK].inference, body, context(request)))


@documented("Stored chat completions the caller may read, a page at a time", answer=StoredCompletionList,
            query=ChatCompletionsPageQuery, errors={400, 501}, api="inference", tag="openai")
async def list_chat_completions(request: web.Request) -> web.Response:
    q = request.query
    result = await _store(request).list(
        after=_id(q.get("after"), "$.query.after"), limit=_limit(q),
        model=_id(q.get("model"), "$.query.model"), order=q.get("order", "desc"), visible=_visible(request),
    )
    return json_response(result)


@documented("One stored chat completion", answer=StoredChatCompletion, errors=ID_ERRORS | {501}, api="inference",
            tag="openai")
async def get_chat_completion(request: web.Request) -> web.Response:
    return json_response(await _store(request).get(_completion_id(request), visible=_visible(request)))


@documented("The input messages of a stored chat completion, a page at a time", answer=StoredMessageList,
            query=MessagesPageQuery, errors=ID_ERRORS | {501}, api="inference", tag="openai")
async def get_chat_completion_messages(request: web.Request) -> web.Response:
    q = request.query
    result = await _store(request).messages(
        _completion_id(request), after=_id(q.get("after"), "$.query.after"), limit=_limit(q),
        order=q.get("order", "asc"), visible=_visible(request),
    )
    return json_response(result)


def _visible(request: web.Request) -> Visible | None:
    """What the caller may read of the stored completions: the access policy's ``read`` on
    ``chat_completion::<id>``. None (no filter) on a server without auth, where every caller is
    the same anonymous one and every record is unowned."""
    stack = request.app[STACK]
    if stack.gate.authenticator is None:
        return None
    policy, caller = stack.registry.policy, request[CALLER]

    def visible(completion_id: str, owner: str | None) -> bool:
        return policy.allows(caller, "read", "chat_completion", completion_id, owner_from_json(owner))

    return visible


def _completion_id(request: web.Request) -> str:
    completion_id = request.match_info["completion_id"]
    _id(completion_id, "$.path.completion_id")
    return completion_id


def _id(value: str | None, loc: str) -> str | None:
    # Ids in paths and cursors follow the rule of resource ids, so a malformed one is a 400
    # that says why, never echoed back whole.
    if value is None or is_resource_id(value):
        return value
    raise BadRequest(f"invalid id at {loc}: use 1 to {MAX_ID_CHARS} characters without control characters "
                     "or leading/trailing spaces", [FieldError(loc, "not a valid id")])


def _limit(query: Mapping[str, str]) -> int:
    try:
        return int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise BadRequest("limit must be an integer", [FieldError("$.query.limit", "expected an integer")]) from None


def _store(request: web.Request) -> InferenceStoreWriter:
    stack = request.app[STACK]
    store = stack.inference_store
    if store is None:
        if isinstance(stack.loaded.run.inference_store, NoStoreConfig):
            raise NotImplementedByProvider("stored chat completions are off: the server's config says "
                                           "inference_store: {type: none}; set type sqlite or postgres to keep them")
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
