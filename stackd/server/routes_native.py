"""Llama Stack 0.2.x native routes: inference (translated to the providers' OpenAI shape) and safety.

Streams never end with ``[DONE]``: the 0.2.x client fails on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
from aiohttp import web

from stackd.apis.inference import close_stream
from stackd.apis.native import (
    ChatCompletionRequest,
    ChatStreamTranslator,
    CompletionRequest,
    CompletionStreamTranslator,
    EmbeddingsRequest,
    chat_to_openai,
    completion_to_openai,
    embeddings_to_openai,
    openai_to_chat_response,
    openai_to_completion_response,
    openai_to_embeddings_response,
)
from stackd.apis.native_types import Message
from stackd.convert import structure
from stackd.server.http import context, json_response, read_json
from stackd.server.keys import STACK
from stackd.server.routes_openai import served
from stackd.server.sse import stream_sse

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _translated(chunks: AsyncIterator[dict[str, Any]], translator: Any) -> AsyncIterator[dict[str, Any]]:
    try:
        async for chunk in chunks:
            for event in translator.feed(chunk):
                yield event
        for event in translator.finish():
            yield event
    finally:
        await close_stream(chunks)


@routes.post("/v1/inference/chat-completion")
@served("inference")
async def chat_completion(request: web.Request) -> web.StreamResponse:
    req: ChatCompletionRequest = structure(await read_json(request), ChatCompletionRequest)
    params = chat_to_openai(req, req.model_id)
    result = await request.app[STACK].inference.openai_chat_completion(
        params, context(request), loc="$.model_id", store=False
    )
    if isinstance(result, dict):
        return json_response(openai_to_chat_response(result))
    return await stream_sse(request, _translated(result, ChatStreamTranslator()), done=False)


@routes.post("/v1/inference/completion")
@served("inference")
async def completion(request: web.Request) -> web.StreamResponse:
    req: CompletionRequest = structure(await read_json(request), CompletionRequest)
    params = completion_to_openai(req, req.model_id)
    result = await request.app[STACK].inference.openai_completion(params, context(request), loc="$.model_id")
    if isinstance(result, dict):
        return json_response(openai_to_completion_response(result))
    return await stream_sse(request, _translated(result, CompletionStreamTranslator()), done=False)


@routes.post("/v1/inference/embeddings")
@served("inference")
async def embeddings(request: web.Request) -> web.Response:
    req: EmbeddingsRequest = structure(await read_json(request), EmbeddingsRequest)
    params = embeddings_to_openai(req, req.model_id)
    result = await request.app[STACK].inference.openai_embeddings(
        params, context(request), loc="$.model_id", dimensions_loc="$.output_dimension"
    )
    return json_response(openai_to_embeddings_response(result))


@attrs.frozen
class RunShieldRequest:
    shield_id: str
    messages: list[Message]
    params: dict[str, Any] | None = None


@routes.post("/v1/safety/run-shield")
@served("safety")
async def run_shield(request: web.Request) -> web.Response:
    body = await read_json(request)
    req: RunShieldRequest = structure(body, RunShieldRequest)
    # Providers get the messages as sent (plain JSON), once validated.
    result = await request.app[STACK].safety.run_shield(
        req.shield_id, body["messages"], dict(req.params or {}), context(request)
    )
    return json_response(result)
