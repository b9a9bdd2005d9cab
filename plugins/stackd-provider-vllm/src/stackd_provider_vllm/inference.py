"""The ``remote::vllm`` inference provider: OpenAI-shaped requests passed through to the server.

stackd and the upstream speak the same shape, so this module adds as little as it can: the
body is serialised once and sent as bytes, answers are parsed once, stream events are handed
on as parsed without being checked or rebuilt. Every field the client sent reaches the server
(vLLM's ``guided_json``, ``seed``, ``logprobs``, ``stream_options`` ...).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import attrs
import orjson
from yarl import URL

from stackd import CallContext, Model, OpenAIResult
from stackd.errors import (
    BadRequest,
    NotFound,
    StackdError,
    UpstreamBadResponse,
    UpstreamClientError,
)
from stackd.upstream import (
    DEFAULT_LIMITS,
    UpstreamLimits,
    check_status,
    limits_of,
    make_session,
    open_sse,
    read_json,
    stream_timeout,
    upstream_errors,
)
from stackd_provider_vllm.config import VLLMConfig

__all__ = ["PROVIDER_DATA_KEYS", "VLLMInferenceProvider", "create"]

# Keys of the X-LlamaStack-Provider-Data header that carry a token for one request.
PROVIDER_DATA_KEYS = ("vllm_api_token", "api_key")

_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=5.0)

@attrs.define(eq=False, repr=False)
class VLLMInferenceProvider:
    """One OpenAI-compatible server, reached through one pooled session."""

    provider_id: str
    config: VLLMConfig
    _session: aiohttp.ClientSession
    limits: UpstreamLimits = DEFAULT_LIMITS
    _stream_timeout: aiohttp.ClientTimeout = attrs.field(init=False)
    _chat_url: URL = attrs.field(init=False)
    _completions_url: URL = attrs.field(init=False)
    _embeddings_url: URL = attrs.field(init=False)
    _models_url: URL = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Built once: yarl parses and quotes a str URL on every request otherwise.
        base = URL(self.config.base_url)
        self._chat_url = base / "v1/chat/completions"
        self._completions_url = base / "v1/completions"
        self._embeddings_url = base / "v1/embeddings"
        self._models_url = base / "v1/models"
        self._stream_timeout = stream_timeout(self.config.timeout, self.config.stream_idle_timeout)

    def __repr__(self) -> str:
        return f"VLLMInferenceProvider(provider_id={self.provider_id!r}, url={self.config.base_url!r})"

    # -- models -------------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The ids the server serves (``GET /v1/models``)."""
        return await self._list_models(None)

    async def _list_models(self, client_timeout: aiohttp.ClientTimeout | None) -> list[str]:
        url = str(self._models_url)
        try:
            with upstream_errors(self.provider_id, url):
                async with self._session.get(
                    self._models_url, headers=self._auth_header(None), timeout=client_timeout
                ) as resp:
                    body = await read_json(resp, self.provider_id, self.limits)
        except UpstreamClientError as exc:
            # The server refused stackd's own request, not the client's: a 401 or 404 here
            # is a configuration problem, so it must not look like the client's fault.
            raise UpstreamBadResponse(
                f"provider {self.provider_id!r}: GET {url} answered HTTP {exc.status}: {exc.message}; "
                "check that `url` points at an OpenAI-compatible server and that `api_token` is right"
            ) from exc
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamBadResponse(
                f"provider {self.provider_id!r}: GET {url} did not answer an OpenAI model list "
                '({"data": [...]}); check that `url` points at an OpenAI-compatible server'
            )
        return [item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]

    async def register_model(self, model: Model) -> Model:
        served = await self.list_models()
        wanted = model.provider_resource_id
        if wanted not in served:
            serving = ", ".join(repr(m) for m in served) if served else "no model"
            raise NotFound(
                f"model {wanted!r} is not served by provider {self.provider_id!r} at {self.config.base_url}; "
                f"the server serves {serving}. Set provider_model_id to one of these, or start the server "
                f"with this model (vLLM: --served-model-name {wanted})"
            )
        # /v1/models says nothing reliable about embedding dimensions: the model is kept as given.
        return model

    # -- inference ----------------------------------------------------------------------------

    async def openai_chat_completion(self, params: dict[str, Any], ctx: CallContext) -> OpenAIResult:
        return await self._call(self._chat_url, self._with_default_max_tokens(params), ctx)

    async def openai_completion(self, params: dict[str, Any], ctx: CallContext) -> OpenAIResult:
        return await self._call(self._completions_url, self._with_default_max_tokens(params), ctx)

    async def openai_embeddings(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        result = await self._call(self._embeddings_url, params, ctx)
        if not isinstance(result, dict):
            raise UpstreamBadResponse(
                f"provider {self.provider_id!r}: the embeddings answer is not an object"
            )
        return result

    def _with_default_max_tokens(self, params: dict[str, Any]) -> dict[str, Any]:
        default = self.config.max_tokens
        if (
            default is None
            or params.get("max_tokens") is not None
            or params.get("max_completion_tokens") is not None
        ):
            return params
        # A copy: the caller's dict may be stored or logged as the client sent it.
        return {**params, "max_tokens": default}

    async def _call(self, url: URL, params: dict[str, Any], ctx: CallContext) -> OpenAIResult:
        headers = self._auth_header(ctx.provider_data)
        # The configured api_token went out (no token of the caller's): its refusal is stackd's problem.
        own = headers is None and self.config.api_token is not None
        body = orjson.dumps(params)
        if params.get("stream"):
            return await self._open_stream(url, body, headers, own)
        with upstream_errors(self.provider_id, str(url)):
            async with self._session.post(url, data=body, headers=headers) as resp:
                result = await read_json(resp, self.provider_id, self.limits, own_credentials=own)
        if not isinstance(result, dict):
            raise UpstreamBadResponse(
                f"provider {self.provider_id!r}: {url} answered JSON that is not an object"
            )
        return result

    async def _open_stream(
        self, url: URL, body: bytes, headers: Mapping[str, str] | None, own_credentials: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        # Everything that can fail before the first event fails here, as an HTTP status.
        first_event_by = asyncio.get_running_loop().time() + self.config.stream_first_byte_timeout
        with upstream_errors(self.provider_id, str(url)):
            async with asyncio.timeout_at(first_event_by):
                resp = await self._session.post(url, data=body, headers=headers, timeout=self._stream_timeout)
            try:
                await check_status(resp, self.provider_id, own_credentials=own_credentials)
                if resp.content_type != "text/event-stream":
                    raise UpstreamBadResponse(
                        f"provider {self.provider_id!r}: {url} answered a streaming request with "
                        f"{resp.content_type or 'no content type'} instead of an event stream"
                    )
            except BaseException:
                resp.close()
                raise
        # One generator from the upstream's bytes on, which owns the response from here.
        return await open_sse(resp, self.provider_id, str(url), self.limits, first_event_by=first_event_by,
                              idle_timeout=self.config.stream_idle_timeout)

    def _auth_header(self, provider_data: Mapping[str, Any] | None) -> dict[str, str] | None:
        """A per-request Authorization header when the caller brought a token, else the session's."""
        if not provider_data:
            return None
        for key in PROVIDER_DATA_KEYS:
            token = provider_data.get(key)
            if token is None:
                continue
            if not isinstance(token, str) or not token:
                raise BadRequest(
                    f"provider data {key!r} for provider {self.provider_id!r} must be a non-empty string "
                    "(X-LlamaStack-Provider-Data header)"
                )
            return {"Authorization": f"Bearer {token}"}
        return None

    # -- lifecycle ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        try:
            await self._list_models(_HEALTH_TIMEOUT)
        except StackdError as exc:
            return {"status": "Error", "message": exc.message}
        return {"status": "OK"}

    async def close(self) -> None:
        await self._session.close()


async def create(config: VLLMConfig, deps: Mapping[str, Any]) -> VLLMInferenceProvider:
    """The factory of ``remote::vllm``: one pooled session for the provider's lifetime."""
    provider_id = deps.get("__provider_id__") or "vllm"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if config.api_token:
        headers["Authorization"] = f"Bearer {config.api_token.reveal()}"
    try:
        session = make_session(
            timeout=config.timeout,
            total_timeout=config.total_timeout,
            tls_verify=config.tls_verify,
            headers=headers,
            limit=config.max_connections,
            provider_id=provider_id,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"provider {provider_id!r}: cannot load the CA bundle tls_verify={config.tls_verify!r} ({exc}); "
            "set tls_verify to true, false or the path of a PEM file"
        ) from exc
    return VLLMInferenceProvider(provider_id, config, session, limits_of(deps))
