"""The ``remote::ollama`` inference provider: OpenAI-shaped calls served by Ollama's native API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import attrs

from stackd import CallContext, Model, OpenAIResult
from stackd.errors import NotFound, UpstreamBadResponse, UpstreamClientError
from stackd.upstream import (
    DEFAULT_LIMITS,
    UpstreamLimits,
    check_status,
    iter_ndjson,
    make_session,
    read_json,
    stream_timeout,
    upstream_errors,
)
from stackd_provider_ollama import translate
from stackd_provider_ollama.config import OllamaConfig

__all__ = ["PROVIDER_TYPE", "OllamaInferenceProvider", "canonical_name"]

PROVIDER_TYPE = "remote::ollama"

_log = logging.getLogger(__name__)


def canonical_name(name: str) -> str:
    """Ollama's own rule: a name without a tag means ``:latest`` (``ns/model`` keeps its slash)."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


class OllamaInferenceProvider:
    """One Ollama server. Holds one pooled session and nothing per request."""

    def __init__(self, config: OllamaConfig, provider_id: str, limits: UpstreamLimits = DEFAULT_LIMITS) -> None:
        self.config = config
        self.provider_id = provider_id
        self.limits = limits
        self._url = str(config.url)
        self._session = make_session(timeout=float(config.timeout), total_timeout=float(config.total_timeout),
                                     provider_id=provider_id)
        self._stream_timeout = stream_timeout(float(config.timeout), float(config.stream_idle_timeout))

    def __repr__(self) -> str:
        return f"<OllamaInferenceProvider {self.provider_id!r} {self._url}>"

    async def close(self) -> None:
        await self._session.close()

    # --- plumbing -------------------------------------------------------------------------

    async def _post(
        self, path: str, body: dict[str, Any], first_event_by: float | None = None
    ) -> aiohttp.ClientResponse:
        """Send, read the status, raise the stackd error for a failure; the caller releases.

        With ``first_event_by`` (a stream), the answer's head must come by then and the
        session's total timeout is lifted: the stream's own timeouts bound it instead.
        """
        url = self._url + path
        with upstream_errors(self.provider_id, url):
            if first_event_by is None:
                resp = await self._session.post(url, json=body)
            else:
                async with asyncio.timeout_at(first_event_by):
                    resp = await self._session.post(url, json=body, timeout=self._stream_timeout)
            try:
                await self._check(resp, body.get("model"))
            except BaseException:
                resp.release()
                raise
        return resp

    async def _check(self, resp: aiohttp.ClientResponse, model: Any) -> None:
        try:
            # Ollama takes no credentials from the caller: a 401/403 (an authenticating proxy in
            # front of it) is about stackd's setup, never the client's token.
            await check_status(resp, self.provider_id, own_credentials=True)
        except UpstreamClientError as exc:
            if exc.status == 404 and "not found" in exc.message and isinstance(model, str):
                raise UpstreamClientError(
                    404,
                    f"{exc.message}; Ollama at {self._url} does not have model {model!r}: "
                    f"run `ollama pull {model}` on that host",
                ) from None
            raise

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        resp = await self._post(path, body)
        url = self._url + path
        with upstream_errors(self.provider_id, url):
            try:
                data = await read_json(resp, self.provider_id, self.limits, own_credentials=True)
            finally:
                resp.release()
        if not isinstance(data, dict):
            raise UpstreamBadResponse(
                f"provider {self.provider_id!r}: {url} answered JSON that is not an object"
            )
        return data

    async def _get_json(self, path: str) -> Any:
        url = self._url + path
        with upstream_errors(self.provider_id, url):
            async with self._session.get(url) as resp:
                return await read_json(resp, self.provider_id, self.limits, own_credentials=True)

    def _bad_answer(self, path: str, what: str) -> UpstreamBadResponse:
        return UpstreamBadResponse(f"provider {self.provider_id!r}: {self._url}{path} answered {what}")

    # --- models ---------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        data = await self._get_json("/api/tags")
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise self._bad_answer("/api/tags", "without a models list")
        names = [m.get("model") or m.get("name") for m in models if isinstance(m, dict)]
        return [n for n in names if isinstance(n, str)]

    async def register_model(self, model: Model) -> Model:
        name = model.provider_resource_id
        pulled = await self.list_models()
        wanted = canonical_name(name)
        if not any(canonical_name(p) == wanted for p in pulled):
            listing = ", ".join(sorted(pulled)) or "none"
            raise NotFound(
                f"provider {self.provider_id!r}: model {name!r} is not pulled into Ollama at {self._url}; "
                f"run `ollama pull {name}` on that host, or register one of the pulled models ({listing})"
            )
        if model.model_type == "embedding" and "embedding_dimension" not in model.metadata:
            # One embedding tells the dimension for sure, whatever the model's metadata says.
            data = await self._post_json("/api/embed", {"model": name, "input": ["dimension probe"]})
            vectors = data.get("embeddings")
            if not (isinstance(vectors, list) and vectors and isinstance(vectors[0], list)):
                raise self._bad_answer("/api/embed", "without embeddings")
            metadata = {**model.metadata, "embedding_dimension": len(vectors[0])}
            return attrs.evolve(model, metadata=metadata)
        return model

    async def health(self) -> dict[str, Any]:
        try:
            data = await self._get_json("/api/version")
        except Exception as exc:  # noqa: BLE001 - health reports any failure as data
            return {"status": "Error", "message": getattr(exc, "message", str(exc))}
        return {"status": "OK", "version": data.get("version") if isinstance(data, dict) else None}

    # --- inference ------------------------------------------------------------------------

    async def openai_chat_completion(self, params: dict[str, Any], ctx: CallContext) -> OpenAIResult:
        body = translate.chat_request(params, self.config.keep_alive, PROVIDER_TYPE)
        model = params["model"]
        if not body["stream"]:
            data = await self._post_json("/api/chat", body)
            return translate.chat_response(data, model)
        first_event_by = self._first_event_by()
        resp = await self._post("/api/chat", body, first_event_by)
        return _Stream(self._chat_stream(resp, model, _include_usage(params), first_event_by), resp)

    async def openai_completion(self, params: dict[str, Any], ctx: CallContext) -> OpenAIResult:
        body = translate.completion_request(
            params, self.config.keep_alive, self.config.raw_completions, PROVIDER_TYPE
        )
        model = params["model"]
        if not body["stream"]:
            data = await self._post_json("/api/generate", body)
            return translate.completion_response(data, model)
        first_event_by = self._first_event_by()
        resp = await self._post("/api/generate", body, first_event_by)
        return _Stream(self._completion_stream(resp, model, _include_usage(params), first_event_by), resp)

    async def openai_embeddings(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        body = translate.embeddings_request(params, self.config.keep_alive)
        data = await self._post_json("/api/embed", body)
        try:
            return translate.embeddings_response(data, params["model"], params.get("encoding_format"))
        except (ValueError, TypeError):
            raise self._bad_answer("/api/embed", "without a list of embeddings") from None

    # --- streams --------------------------------------------------------------------------

    def _first_event_by(self) -> float:
        return asyncio.get_running_loop().time() + float(self.config.stream_first_byte_timeout)

    async def _lines(
        self, resp: aiohttp.ClientResponse, path: str, first_event_by: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Ollama's NDJSON objects up to the one with ``done: true``; errors become 502.

        The response is released in ``finally``: closed outright when the stream did not
        finish, so that Ollama sees the disconnect and stops generating.
        """
        url = self._url + path
        finished = False
        try:
            with upstream_errors(self.provider_id, url):
                async for obj in iter_ndjson(
                    resp, self.provider_id, self.limits, first_event_by=first_event_by,
                    idle_timeout=float(self.config.stream_idle_timeout),
                ):
                    if "error" in obj:
                        raise UpstreamBadResponse(
                            f"provider {self.provider_id!r}: Ollama failed mid-stream: {obj['error']}"
                        )
                    yield obj
                    if obj.get("done"):
                        finished = True
                        return
            raise UpstreamBadResponse(
                f"provider {self.provider_id!r}: {url} ended the stream before its final (done) object"
            )
        finally:
            if finished:
                resp.release()
            else:
                resp.close()

    async def _chat_stream(
        self, resp: aiohttp.ClientResponse, model: str, include_usage: bool, first_event_by: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        cid = translate.new_id("chatcmpl")
        created = int(time.time())
        chunk = translate.chat_chunk
        extra = {"usage": None} if include_usage else None
        tool_index = 0

        def emit(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = chunk(cid, created, model, delta, finish)
            if extra:
                out.update(extra)
            return out

        lines = self._lines(resp, "/api/chat", first_event_by)
        try:
            yield emit({"role": "assistant", "content": ""})
            async for obj in lines:
                message = obj.get("message") or {}
                thinking = message.get("thinking")
                if thinking:
                    yield emit({"reasoning_content": thinking})
                content = message.get("content")
                if content:
                    yield emit({"content": content})
                calls = message.get("tool_calls")
                if calls:
                    yield emit({"tool_calls": translate.openai_tool_calls(calls, tool_index)})
                    tool_index += len(calls)
                if obj.get("done"):
                    yield emit({}, translate.finish_reason(obj.get("done_reason"), tool_index > 0))
                    if include_usage:
                        last = chunk(cid, created, model, {})
                        last["choices"] = []
                        last["usage"] = translate.usage_of(obj)
                        yield last
        finally:
            await lines.aclose()

    async def _completion_stream(
        self, resp: aiohttp.ClientResponse, model: str, include_usage: bool, first_event_by: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        cid = translate.new_id("cmpl")
        created = int(time.time())
        lines = self._lines(resp, "/api/generate", first_event_by)
        try:
            async for obj in lines:
                text = obj.get("response")
                if text:
                    yield translate.completion_chunk(cid, created, model, text)
                if obj.get("done"):
                    yield translate.completion_chunk(
                        cid, created, model, "", translate.finish_reason(obj.get("done_reason"), False)
                    )
                    if include_usage:
                        last = translate.completion_chunk(cid, created, model, "")
                        last["choices"] = []
                        last["usage"] = translate.usage_of(obj)
                        yield last
        finally:
            await lines.aclose()


def _include_usage(params: Mapping[str, Any]) -> bool:
    options = params.get("stream_options")
    return isinstance(options, Mapping) and bool(options.get("include_usage"))


class _Stream:
    """The stream handed to the core: an async iterator whose ``aclose()`` always frees the
    upstream response, even when it comes before the first chunk was asked for (a generator
    that never started would skip its ``finally``)."""

    __slots__ = ("_gen", "_resp")

    def __init__(self, gen: AsyncGenerator[dict[str, Any], None], resp: aiohttp.ClientResponse) -> None:
        self._gen = gen
        self._resp = resp

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            if not self._resp.closed:
                self._resp.close()
