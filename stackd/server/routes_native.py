"""Llama Stack 0.2.x native routes: inference (:mod:`stackd.apis.native`) and safety.

Streams never end with ``[DONE]``: the 0.2.x client fails on it.
"""

from __future__ import annotations

from aiohttp import web

from stackd.apis import native, safety
from stackd.apis.native.types import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest
from stackd.apis.responses import (
    ChatCompletionResponse,
    ChatStreamFrame,
    CompletionResponse,
    CompletionStreamFrame,
    EmbeddingsResponse,
    RunShieldResponse,
)
from stackd.apis.safety import RunShieldRequest
from stackd.server.http import context, json_response, read_json
from stackd.server.keys import STACK
from stackd.server.route_docs import CALL_ERRORS, documented
from stackd.server.sse import stream_sse

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _answer(request: web.Request, result: native.NativeResult) -> web.StreamResponse:
    if isinstance(result, dict):
        return json_response(result)
    return await stream_sse(request, result, done=False)


@routes.post("/v1/inference/chat-completion")
@documented("Chat completion (Llama Stack 0.2.x)", body=ChatCompletionRequest, answer=ChatCompletionResponse,
            stream=ChatStreamFrame, errors=CALL_ERRORS, api="inference", tag="inference")
async def chat_completion(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await _answer(request, await native.chat_completion(request.app[STACK].inference, body, context(request)))


@routes.post("/v1/inference/completion")
@documented("Text completion (Llama Stack 0.2.x)", body=CompletionRequest, answer=CompletionResponse,
            stream=CompletionStreamFrame, errors=CALL_ERRORS, api="inference", tag="inference")
async def completion(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await _answer(request, await native.completion(request.app[STACK].inference, body, context(request)))


@routes.post("/v1/inference/embeddings")
@documented("Embeddings (Llama Stack 0.2.x)", body=EmbeddingsRequest, answer=EmbeddingsResponse,
            errors=CALL_ERRORS, api="inference", tag="inference")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    return json_response(await native.embeddings(request.app[STACK].inference, body, context(request)))


@routes.post("/v1/safety/run-shield")
@documented("Check messages against a shield", body=RunShieldRequest, answer=RunShieldResponse,
            errors=CALL_ERRORS, api="safety", tag="safety")
async def run_shield(request: web.Request) -> web.Response:
    body = await read_json(request)
    return json_response(await safety.run_shield(request.app[STACK].safety, body, context(request)))
