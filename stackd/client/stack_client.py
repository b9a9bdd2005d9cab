"""The async client: :class:`StackClient`, one method per route of the API (API.md §2)."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload
from urllib.parse import quote, urlsplit

import aiohttp
import cattrs
import orjson
import yarl

import stackd
from stackd.apis.models import Model, Shield
from stackd.apis.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatStreamChunk,
    Completion,
    CompletionResponse,
    CompletionStreamChunk,
    EmbeddingList,
    EmbeddingsResponse,
    Health,
    Moderation,
    ProviderInfo,
    RouteInfo,
    RunShieldResponse,
    StoredChatCompletion,
    StoredCompletionList,
    StoredMessageList,
    VersionInfo,
)
from stackd.client.errors import (
    MAX_ERROR_BODY,
    ConnectionFailed,
    InvalidResponse,
    QuotaExceeded,
    ServiceUnavailable,
    StackClientError,
    error_for_status,
)
from stackd.client.retry import Retry
from stackd.client.stream import DEFAULT_MAX_EVENT_BYTES, Stream
from stackd.convert import StructureError, converter, field_errors

__all__ = ["DEFAULT_TIMEOUT", "StackClient", "StackVersionWarning"]

log = logging.getLogger("stackd.client")

T = TypeVar("T")

DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Ids are sent in paths; this is the server's own bound (stackd.apis.models.MAX_ID_CHARS) with
# room for provider-made ids (stored completions).
_MAX_PATH_ID = 1024

Messages = Sequence[Mapping[str, Any] | Any]
"""Messages as dicts in the wire shape, or the attrs message classes of :mod:`stackd.apis.native.types`."""


async def _read_upto(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (an error body is a message, not a download)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class StackVersionWarning(UserWarning):
    """The server runs another major.minor version of stackd than this client: most calls will
    work, but fields added or changed between the two may be missing or ignored."""


def _wire(value: Any) -> Any:
    """A request value as JSON-ready data: attrs objects (anywhere inside) unstructured."""
    return converter.unstructure(value)


def _quote(identifier: str, what: str, *, slash: bool) -> str:
    if not isinstance(identifier, str) or not identifier or len(identifier) > _MAX_PATH_ID:
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_PATH_ID} characters")
    # Model and shield ids may hold '/' (Hugging Face names); their routes take the rest of the path.
    return quote(identifier, safe="/:@" if slash else ":@")


def _query(**params: Any) -> dict[str, str]:
    return {k: str(v) for k, v in params.items() if v is not None}


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _token_header(token: str) -> str:
    if not token or any(c in token for c in "\r\n") or token != token.strip():
        # The token is not quoted: the message must not carry it.
        raise ValueError("token must be a non-empty string without spaces around it or line breaks")
    return f"Bearer {token}"


class StackClient:
    """An async client of a stackd (or Llama Stack 0.2.x-compatible) server.

    ``async with StackClient("http://localhost:8321", token=...) as client: ...``. With
    ``session=`` it uses the caller's :class:`aiohttp.ClientSession` and never closes it;
    otherwise it opens one on first use and closes it on exit (or :meth:`close`).

    ``timeout``: seconds to wait for the connection and then for each read (a stream may last
    longer as long as data keeps coming), or an :class:`aiohttp.ClientTimeout` used as is.
    ``retry``: a :class:`Retry` to retry 429 and 503 answers (off by default).
    ``provider_data``: sent as ``X-LlamaStack-Provider-Data`` (per-request upstream keys).
    ``check_version``: before the first call, ``GET /v1/version`` once; another major.minor
    version than this client's warns (:class:`StackVersionWarning`) and nothing else.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        provider_data: Mapping[str, Any] | None = None,
        check_version: bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("base_url must be an http(s) URL such as 'http://localhost:8321', "
                             "without query or fragment")
        if parts.username or parts.password:
            raise ValueError("base_url must not hold credentials; pass token= instead")
        self.base_url = base_url.rstrip("/")
        self._headers: dict[str, str] = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = _token_header(token)
        if provider_data is not None:
            self._headers["X-LlamaStack-Provider-Data"] = orjson.dumps(dict(provider_data)).decode()
        if isinstance(timeout, aiohttp.ClientTimeout):
            self._timeout = timeout
        else:
            if not timeout > 0:
                raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
            self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        if max_response_bytes < 1 or max_event_bytes < 1:
            raise ValueError("max_response_bytes and max_event_bytes must be positive")
        self.retry = retry
        self._session = session
        self._owns_session = session is None
        self._version_checked = not check_version
        self._max_response = max_response_bytes
        self._max_event = max_event_bytes
        self.server_version: str | None = None
        """The server's version, once the version check (or :meth:`version`) has read it."""

    def __repr__(self) -> str:
        token = "set" if "Authorization" in self._headers else "none"
        return f"<StackClient {self.base_url} token={token}>"

    # ---- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> StackClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session the client opened (a caller's session is left open)."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        elif self._session.closed:
            raise StackClientError("the client's session is closed: open a new StackClient (or session)")
        return self._session

    # ---- HTTP ----------------------------------------------------------------------------

    async def _check_version(self) -> None:
        if self._version_checked:
            return
        self._version_checked = True
        try:
            async with self._session_now().get(
                yarl.URL(self.base_url + "/v1/version", encoded=True), headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    return
                found = orjson.loads(await _read_upto(resp, MAX_ERROR_BODY)).get("version")
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            # The call itself will say what is wrong with the server, more usefully than this.
            log.debug("version check of %s skipped: %s", self.base_url, type(exc).__name__)
            return
        if isinstance(found, str):
            self._note_version(found)

    def _note_version(self, found: str) -> None:
        self.server_version = found
        if _major_minor(found) != _major_minor(stackd.__version__):
            warnings.warn(
                f"the server at {self.base_url} runs stackd {found[:40]}, this client is {stackd.__version__}: "
                "calls may miss fields added or changed in between; install the server's version of the client",
                StackVersionWarning,
                stacklevel=4,
            )

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> aiohttp.ClientResponse:
        """The response to ``method path`` once its status is a success (or in ``accept``).
        Error answers raise; 429/503 are retried first when :attr:`retry` says so."""
        await self._check_version()
        session = self._session_now()
        url = yarl.URL(self.base_url + path, encoded=True)
        if query:
            url = url.update_query(query)
        headers = self._headers
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers = {**headers, "Content-Type": "application/json"}
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            try:
                resp = await session.request(method, url, data=data, headers=headers, timeout=self._timeout)
            except aiohttp.ClientError as exc:
                raise ConnectionFailed(f"{method} {path}: no answer from {self.base_url}: {exc}") from exc
            except TimeoutError:
                raise ConnectionFailed(f"{method} {path}: no answer from {self.base_url} within the client's "
                                       "timeout") from None
            if resp.status < 400 or resp.status in accept:
                return resp
            error = await self._error(resp)
            delay = self._retry_delay(error, attempt, waited)
            if delay is None:
                raise error
            log.info("retrying %s %s in %.1f s: HTTP %s (attempt %d)", method, path, delay, resp.status, attempt)
            await asyncio.sleep(delay)
            waited += delay

    def _retry_delay(self, error: Exception, attempt: int, waited: float) -> float | None:
        retry = self.retry
        if retry is None or attempt >= retry.attempts:
            return None
        if not isinstance(error, QuotaExceeded | ServiceUnavailable) or error.status not in retry.statuses:
            return None
        delay = retry.delay(attempt, error.retry_after)
        return delay if waited + delay <= retry.max_wait else None

    async def _error(self, resp: aiohttp.ClientResponse) -> Exception:
        try:
            raw = await _read_upto(resp, MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        finally:
            resp.release()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return error_for_status(resp.status, resp.headers, body, resp.reason or "")

    async def _read_json(self, resp: aiohttp.ClientResponse, what: str) -> Any:
        try:
            if resp.content_length is not None and resp.content_length > self._max_response:
                raise InvalidResponse(f"{what}: the answer is {resp.content_length} bytes, over max_response_bytes "
                                      f"({self._max_response})")
            chunks, size = [], 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > self._max_response:
                    raise InvalidResponse(f"{what}: the answer is over max_response_bytes ({self._max_response})")
                chunks.append(chunk)
        except aiohttp.ClientError as exc:
            resp.close()
            raise ConnectionFailed(f"{what}: the answer broke off: {exc}") from exc
        except TimeoutError:
            resp.close()
            raise ConnectionFailed(f"{what}: the answer stalled past the client's timeout") from None
        except BaseException:
            resp.close()
            raise
        resp.release()
        raw = b"".join(chunks)
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            kind = resp.headers.get("Content-Type", "no content type")
            raise InvalidResponse(f"{what}: the answer is not JSON ({kind[:60]}); is {self.base_url} a "
                                  "stackd server?") from None

    def _structure(self, data: Any, cls: type[T], what: str) -> T:
        try:
            return converter.structure(data, cls)
        except (cattrs.BaseValidationError, StructureError, KeyError, ValueError, TypeError) as exc:
            problems = "; ".join(str(e) for e in field_errors(exc)[:5])
            raise InvalidResponse(f"{what}: the answer does not have the documented shape: {problems}") from None

    async def _call(
        self, method: str, path: str, cls: type[T], *, body: Any = None, query: Mapping[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> T:
        what = f"{method} {path}"
        resp = await self._send(method, path, body=body, query=query, accept=accept)
        return self._structure(await self._read_json(resp, what), cls, what)

    async def _list(self, path: str, cls: type[T]) -> list[T]:
        what = f"GET {path}"
        data = await self._read_json(await self._send("GET", path), what)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise InvalidResponse(f"{what}: the answer has no 'data' list")
        return self._structure(items, list[cls], what)  # type: ignore[valid-type]

    async def _maybe_stream(
        self, path: str, body: dict[str, Any], whole: type[T], chunk: type[Any]
    ) -> Any:
        if not body.get("stream"):
            return await self._call("POST", path, whole, body=body)
        resp = await self._send("POST", path, body=body)
        what = f"POST {path}"

        def parse(data: Any) -> Any:
            return self._structure(data, chunk, what)

        return Stream(resp, parse, max_event_bytes=self._max_event)

    async def request(
        self, method: str, path: str, *, body: Any = None, query: Mapping[str, Any] | None = None
    ) -> Any:
        """Any route, untyped: the answer's JSON as parsed (None for an empty one). For routes this
        client has no method for yet; errors, retry, auth and bounds work as for the others."""
        if not path.startswith("/"):
            raise ValueError("path must start with '/', e.g. '/v1/models'")
        resp = await self._send(method.upper(), path, body=body, query=_query(**(query or {})))
        return await self._read_json(resp, f"{method.upper()} {path}")

    # ---- health, version, providers, routes --------------------------------------------------

    async def health(self) -> Health:
        """``GET /v1/health``: ``status`` is ``OK``, or ``Error`` with a ``message`` (a 503, returned, not raised)."""
        return await self._call("GET", "/v1/health", Health, accept=(503,))

    async def version(self) -> VersionInfo:
        """``GET /v1/version``."""
        self._version_checked = True  # this call is the check: no second GET before it
        info = await self._call("GET", "/v1/version", VersionInfo)
        self._note_version(info.version)
        return info

    async def list_providers(self) -> list[ProviderInfo]:
        """``GET /v1/providers``: each provider with its config (secrets masked) and health."""
        return await self._list("/v1/providers", ProviderInfo)

    async def get_provider(self, provider_id: str) -> ProviderInfo:
        """``GET /v1/providers/{provider_id}``."""
        path = "/v1/providers/" + _quote(provider_id, "provider_id", slash=False)
        return await self._call("GET", path, ProviderInfo)

    async def list_routes(self) -> list[RouteInfo]:
        """``GET /v1/inspect/routes``."""
        return await self._list("/v1/inspect/routes", RouteInfo)

    # ---- models and shields ------------------------------------------------------------------

    async def list_models(self) -> list[Model]:
        """``GET /v1/models``: the models the caller may see."""
        return await self._list("/v1/models", Model)

    async def get_model(self, model_id: str) -> Model:
        """``GET /v1/models/{model_id}``."""
        return await self._call("GET", "/v1/models/" + _quote(model_id, "model_id", slash=True), Model)

    async def register_model(
        self,
        model_id: str,
        *,
        provider_model_id: str | None = None,
        provider_id: str | None = None,
        model_type: Literal["llm", "embedding"] = "llm",
        metadata: Mapping[str, Any] | None = None,
        input_shields: Sequence[str] | None = None,
        output_shields: Sequence[str] | None = None,
    ) -> Model:
        """``POST /v1/models``. ``provider_id`` may be left out when the server has one inference
        provider; an embedding model needs ``metadata={"embedding_dimension": N}``."""
        body: dict[str, Any] = {"model_id": model_id, "model_type": model_type}
        for key, value in (("provider_model_id", provider_model_id), ("provider_id", provider_id),
                           ("metadata", None if metadata is None else dict(metadata)),
                           ("input_shields", None if input_shields is None else list(input_shields)),
                           ("output_shields", None if output_shields is None else list(output_shields))):
            if value is not None:
                body[key] = value
        return await self._call("POST", "/v1/models", Model, body=body)

    async def unregister_model(self, model_id: str) -> None:
        """``DELETE /v1/models/{model_id}``."""
        resp = await self._send("DELETE", "/v1/models/" + _quote(model_id, "model_id", slash=True))
        resp.release()

    async def list_shields(self) -> list[Shield]:
        """``GET /v1/shields``."""
        return await self._list("/v1/shields", Shield)

    async def get_shield(self, shield_id: str) -> Shield:
        """``GET /v1/shields/{shield_id}``."""
        return await self._call("GET", "/v1/shields/" + _quote(shield_id, "shield_id", slash=True), Shield)

    async def register_shield(
        self,
        shield_id: str,
        *,
        provider_shield_id: str | None = None,
        provider_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        on_failure: Literal["closed", "open"] = "closed",
    ) -> Shield:
        """``POST /v1/shields``."""
        body: dict[str, Any] = {"shield_id": shield_id, "on_failure": on_failure}
        for key, value in (("provider_shield_id", provider_shield_id), ("provider_id", provider_id),
                           ("params", None if params is None else dict(params))):
            if value is not None:
                body[key] = value
        return await self._call("POST", "/v1/shields", Shield, body=body)

    async def unregister_shield(self, shield_id: str) -> None:
        """``DELETE /v1/shields/{shield_id}``."""
        resp = await self._send("DELETE", "/v1/shields/" + _quote(shield_id, "shield_id", slash=True))
        resp.release()

    # ---- native inference and safety -------------------------------------------------------

    @overload
    async def chat_completion(
        self, model_id: str, messages: Messages, *, stream: Literal[False] = False, **options: Any
    ) -> ChatCompletionResponse: ...

    @overload
    async def chat_completion(
        self, model_id: str, messages: Messages, *, stream: Literal[True], **options: Any
    ) -> Stream[ChatStreamChunk]: ...

    async def chat_completion(
        self, model_id: str, messages: Messages, *, stream: bool = False, **options: Any
    ) -> ChatCompletionResponse | Stream[ChatStreamChunk]:
        """``POST /v1/inference/chat-completion``. ``options`` are the other body fields
        (``sampling_params``, ``response_format``, ``tools``, ``tool_choice``, ``tool_config``,
        ``logprobs``), as dicts or the attrs classes of :mod:`stackd.apis.native.types`."""
        body = {"model_id": model_id, "messages": _wire(list(messages)), **_wire(options)}
        if stream:
            body["stream"] = True
        result: ChatCompletionResponse | Stream[ChatStreamChunk] = await self._maybe_stream(
            "/v1/inference/chat-completion", body, ChatCompletionResponse, ChatStreamChunk)
        return result

    @overload
    async def completion(
        self, model_id: str, content: Any, *, stream: Literal[False] = False, **options: Any
    ) -> CompletionResponse: ...

    @overload
    async def completion(
        self, model_id: str, content: Any, *, stream: Literal[True], **options: Any
    ) -> Stream[CompletionStreamChunk]: ...

    async def completion(
        self, model_id: str, content: Any, *, stream: bool = False, **options: Any
    ) -> CompletionResponse | Stream[CompletionStreamChunk]:
        """``POST /v1/inference/completion``: ``content`` is a string or content items;
        ``options``: ``sampling_params``, ``response_format``, ``logprobs``."""
        body = {"model_id": model_id, "content": _wire(content), **_wire(options)}
        if stream:
            body["stream"] = True
        result: CompletionResponse | Stream[CompletionStreamChunk] = await self._maybe_stream(
            "/v1/inference/completion", body, CompletionResponse, CompletionStreamChunk)
        return result

    async def embeddings(self, model_id: str, contents: Sequence[Any], **options: Any) -> EmbeddingsResponse:
        """``POST /v1/inference/embeddings``; ``options``: ``text_truncation``, ``output_dimension``, ``task_type``."""
        body = {"model_id": model_id, "contents": _wire(list(contents)), **_wire(options)}
        return await self._call("POST", "/v1/inference/embeddings", EmbeddingsResponse, body=body)

    async def run_shield(
        self, shield_id: str, messages: Messages, *, params: Mapping[str, Any] | None = None
    ) -> RunShieldResponse:
        """``POST /v1/safety/run-shield``: ``violation`` is None when the messages pass."""
        body: dict[str, Any] = {"shield_id": shield_id, "messages": _wire(list(messages))}
        if params is not None:
            body["params"] = dict(params)
        return await self._call("POST", "/v1/safety/run-shield", RunShieldResponse, body=body)

    # ---- OpenAI ---------------------------------------------------------------------------

    @overload
    async def openai_chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: Literal[False] = False, **params: Any
    ) -> ChatCompletion: ...

    @overload
    async def openai_chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: Literal[True], **params: Any
    ) -> Stream[ChatCompletionChunk]: ...

    async def openai_chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: bool = False, **params: Any
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """``POST /v1/chat/completions``; ``params`` are OpenAI's other fields (``max_tokens``,
        ``temperature``, ``tools``, ``stream_options``...), passed on as given."""
        body = {"model": model, "messages": [dict(m) for m in messages], **params}
        if stream:
            body["stream"] = True
        result: ChatCompletion | Stream[ChatCompletionChunk] = await self._maybe_stream(
            "/v1/chat/completions", body, ChatCompletion, ChatCompletionChunk)
        return result

    @overload
    async def openai_completion(
        self, model: str, prompt: str | Sequence[Any], *, stream: Literal[False] = False, **params: Any
    ) -> Completion: ...

    @overload
    async def openai_completion(
        self, model: str, prompt: str | Sequence[Any], *, stream: Literal[True], **params: Any
    ) -> Stream[Completion]: ...

    async def openai_completion(
        self, model: str, prompt: str | Sequence[Any], *, stream: bool = False, **params: Any
    ) -> Completion | Stream[Completion]:
        """``POST /v1/completions``; each stream chunk is a :class:`Completion` too."""
        body = {"model": model, "prompt": prompt if isinstance(prompt, str) else list(prompt), **params}
        if stream:
            body["stream"] = True
        result: Completion | Stream[Completion] = await self._maybe_stream(
            "/v1/completions", body, Completion, Completion)
        return result

    async def openai_embeddings(self, model: str, input: str | Sequence[Any], **params: Any) -> EmbeddingList:
        """``POST /v1/embeddings``; ``params``: ``dimensions``, ``encoding_format``, ``user``."""
        body = {"model": model, "input": input if isinstance(input, str) else list(input), **params}
        return await self._call("POST", "/v1/embeddings", EmbeddingList, body=body)

    async def moderations(self, input: str | Sequence[Any], *, model: str | None = None) -> Moderation:
        """``POST /v1/moderations``: ``model`` names a shield or the model a shield uses (the
        server's ``default_moderation_shield`` when None)."""
        body: dict[str, Any] = {"input": input if isinstance(input, str) else list(input)}
        if model is not None:
            body["model"] = model
        return await self._call("POST", "/v1/moderations", Moderation, body=body)

    # ---- stored chat completions -----------------------------------------------------------

    async def list_chat_completions(
        self, *, after: str | None = None, limit: int | None = None, model: str | None = None,
        order: Literal["asc", "desc"] | None = None,
    ) -> StoredCompletionList:
        """``GET /v1/chat/completions``: a page of stored completions (newest first by default)."""
        return await self._call("GET", "/v1/chat/completions", StoredCompletionList,
                                query=_query(after=after, limit=limit, model=model, order=order))

    async def get_chat_completion(self, completion_id: str) -> StoredChatCompletion:
        """``GET /v1/chat/completions/{completion_id}``."""
        path = "/v1/chat/completions/" + _quote(completion_id, "completion_id", slash=False)
        return await self._call("GET", path, StoredChatCompletion)

    async def list_chat_completion_messages(
        self, completion_id: str, *, after: str | None = None, limit: int | None = None,
        order: Literal["asc", "desc"] | None = None,
    ) -> StoredMessageList:
        """``GET /v1/chat/completions/{completion_id}/messages``: its input messages (oldest first by default)."""
        path = "/v1/chat/completions/" + _quote(completion_id, "completion_id", slash=False) + "/messages"
        return await self._call("GET", path, StoredMessageList, query=_query(after=after, limit=limit, order=order))

