"""The Llama Stack 0.2.x native inference API, served through providers that speak OpenAI.

Providers implement only the OpenAI-shaped calls (:mod:`stackd.apis.inference`); a native
request is structured and checked (:mod:`.types`), turned into OpenAI params
(:mod:`.requests`), and the answer or each stream chunk turned back (:mod:`.responses`,
:mod:`.streams`). The three calls below are the whole adapter: the HTTP routes, and anything
else in the process, call them with a body and get the native answer back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from stackd.apis.context import CallContext
from stackd.apis.inference import InferenceRouting
from stackd.apis.native.requests import chat_to_openai, completion_to_openai, embeddings_to_openai
from stackd.apis.native.responses import (
    openai_to_chat_response,
    openai_to_completion_response,
    openai_to_embeddings_response,
)
from stackd.apis.native.streams import ChatStreamTranslator, CompletionStreamTranslator, translated
from stackd.apis.native.types import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest
from stackd.convert import structure

__all__ = ["NativeResult", "chat_completion", "completion", "embeddings"]

NativeResult = dict[str, Any] | AsyncIterator[dict[str, Any]]
"""A native body, or (for ``"stream": true``) an async iterator of native stream events."""


async def chat_completion(inference: InferenceRouting, body: dict[str, Any], ctx: CallContext) -> NativeResult:
    """``POST /v1/inference/chat-completion``."""
    req = structure(body, ChatCompletionRequest)
    # Native calls are not stored: the stored completions are those of the OpenAI route.
    result = await inference.openai_chat_completion(
        chat_to_openai(req, req.model_id), ctx, loc="$.model_id", store=False
    )
    if isinstance(result, dict):
        answer = openai_to_chat_response(result)
        if "violation" in result:  # a guardrail answered (stackd.guardrails)
            answer["violation"] = result["violation"]
        return answer
    return translated(result, ChatStreamTranslator())


async def completion(inference: InferenceRouting, body: dict[str, Any], ctx: CallContext) -> NativeResult:
    """``POST /v1/inference/completion``."""
    req = structure(body, CompletionRequest)
    result = await inference.openai_completion(completion_to_openai(req, req.model_id), ctx, loc="$.model_id")
    if isinstance(result, dict):
        return openai_to_completion_response(result)
    return translated(result, CompletionStreamTranslator())


async def embeddings(inference: InferenceRouting, body: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """``POST /v1/inference/embeddings``."""
    req = structure(body, EmbeddingsRequest)
    result = await inference.openai_embeddings(
        embeddings_to_openai(req, req.model_id), ctx, loc="$.model_id", dimensions_loc="$.output_dimension"
    )
    return openai_to_embeddings_response(result)
