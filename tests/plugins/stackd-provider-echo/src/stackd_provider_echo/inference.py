"""Echo inference: OpenAI-shaped answers computed from the request alone."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from stackd import CallContext, Model
from stackd.errors import BadRequest, NotFound
from stackd_provider_echo.config import EchoConfig


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class EchoInference:
    def __init__(self, config: EchoConfig, provider_id: str) -> None:
        self.config = config
        self.provider_id = provider_id
        self.closed = False
        self._ready_at: float | None = None

    def is_ready(self) -> bool:
        # Counted from the first question, so a test sees "loading" however slowly the server started.
        if self.config.ready_after <= 0:
            return True
        if self._ready_at is None:
            self._ready_at = time.monotonic() + self.config.ready_after
        return time.monotonic() >= self._ready_at

    async def register_model(self, model: Model) -> Model:
        if model.provider_resource_id not in self.config.models:
            raise NotFound(
                f"provider {self.provider_id!r} does not serve {model.provider_resource_id!r}; "
                f"it serves: {', '.join(self.config.models)}"
            )
        return model

    def _answer(self, prompt: str, params: Mapping[str, Any], ctx: CallContext) -> tuple[list[str], str]:
        words = (self.config.prefix + prompt).split()
        if ctx.provider_data.get("echo_suffix"):
            words.append(str(ctx.provider_data["echo_suffix"]))
        if ctx.provider_data.get("echo_request_id"):
            words.append(f"request:{ctx.request_id}")
        limit = params.get("max_tokens") or params.get("max_completion_tokens")
        finish = "stop"
        if limit is not None and len(words) > int(limit):
            words, finish = words[: int(limit)], "length"
        return words, finish

    async def openai_chat_completion(self, params: dict[str, Any], ctx: CallContext) -> Any:
        messages = params.get("messages") or []
        if not messages:
            raise BadRequest("messages must not be empty")
        prompt = _text_of(messages[-1].get("content"))
        words, finish = self._answer(prompt, params, ctx)
        created = int(time.time())
        ident = "chatcmpl-echo-" + hashlib.sha1(prompt.encode()).hexdigest()[:12]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                 "total_tokens": len(prompt.split()) + len(words)}
        if not params.get("stream"):
            return {
                "id": ident, "object": "chat.completion", "created": created, "model": params["model"],
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                             "message": {"role": "assistant", "content": " ".join(words)}}],
                "usage": usage,
            }
        include_usage = bool((params.get("stream_options") or {}).get("include_usage"))
        return self._stream(ident, created, params["model"], words, finish, usage if include_usage else None)

    async def _stream(self, ident: str, created: int, model: str, words: list[str], finish: str,
                      usage: dict[str, int] | None) -> AsyncIterator[dict[str, Any]]:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        for i, word in enumerate(words):
            await asyncio.sleep(0)
            text = word if i == 0 else " " + word
            yield {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        if usage is not None:
            yield {**base, "choices": [], "usage": usage}

    async def openai_completion(self, params: dict[str, Any], ctx: CallContext) -> Any:
        prompt = params.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        words, finish = self._answer(prompt, params, ctx)
        base = {"id": "cmpl-echo", "object": "text_completion", "created": int(time.time()), "model": params["model"]}
        if not params.get("stream"):
            return {**base, "choices": [{"index": 0, "text": " ".join(words), "finish_reason": finish,
                                         "logprobs": None}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                              "total_tokens": len(prompt.split()) + len(words)}}

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for i, word in enumerate(words):
                yield {**base, "choices": [{"index": 0, "text": word if i == 0 else " " + word,
                                            "finish_reason": None, "logprobs": None}]}
            yield {**base, "choices": [{"index": 0, "text": "", "finish_reason": finish, "logprobs": None}]}

        return chunks()

    async def openai_embeddings(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        inputs = params.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dim = int(params.get("dimensions") or self.config.embedding_dimension)
        data = []
        for i, text in enumerate(texts):
            digest = hashlib.sha256(str(text).encode()).digest()
            data.append({"object": "embedding", "index": i,
                         "embedding": [digest[j % len(digest)] / 255.0 for j in range(dim)]})
        return {"object": "list", "data": data, "model": params["model"],
                "usage": {"prompt_tokens": sum(len(str(t).split()) for t in texts),
                          "total_tokens": sum(len(str(t).split()) for t in texts)}}

    async def health(self) -> dict[str, Any]:
        return {"status": "OK"}

    async def close(self) -> None:
        self.closed = True


async def create(config: EchoConfig, deps: Mapping[str, Any]) -> EchoInference:
    return EchoInference(config, str(deps.get("__provider_id__", "echo")))
