"""The inference API: what an inference provider implements.

Providers speak one shape, OpenAI's, because every upstream stackd proxies (vLLM, Ollama's
OpenAI-style options, llama.cpp) maps onto it with the least loss. The Llama Stack native
routes (``/v1/inference/chat-completion`` ...) are translated to and from it once, in the core
(:mod:`stackd.apis.native`), so a plugin writes each call once.

Calling convention for the three ``openai_*`` methods:

- ``params`` is the client's JSON body as a dict, with ``model`` already replaced by the
  model's ``provider_resource_id``. Fields the provider does not know must be passed on
  unchanged (vLLM's ``guided_json``, ``seed``, ...), not dropped.
- Without ``"stream": true`` the method returns the response body as a dict
  (``chat.completion``, ``text_completion`` or the embeddings ``list``).
- With ``"stream": true`` it returns an async iterator of chunk dicts
  (``chat.completion.chunk`` / ``text_completion``); events of :func:`stackd.upstream.iter_sse`
  are passed on as they are (their ``raw`` bytes are forwarded; a provider that changes one sets
  ``raw`` to None). The method itself must do everything
  that can fail before the first byte (connect, send, read the status), so such failures
  become a proper HTTP status rather than an error frame. The iterator is closed with
  ``aclose()`` when the client goes away: release the upstream connection in ``finally``.
- Failures are :mod:`stackd.errors` exceptions: ``UpstreamUnavailable`` (503, cannot connect),
  ``UpstreamTimeout`` (504), ``UpstreamClientError`` (the upstream's own 4xx and message),
  ``UpstreamBadResponse`` (502, not JSON, truncated). Anything else is a bug and becomes 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from stackd.apis.context import CallContext
from stackd.apis.models import Model

__all__ = ["InferenceProvider", "InferenceRouting", "OpenAIResult", "close_stream"]

OpenAIResult = dict[str, Any] | AsyncIterator[dict[str, Any]]


@runtime_checkable
class InferenceProvider(Protocol):
    async def register_model(self, model: Model) -> Model:
        """Check that the upstream serves ``model.provider_resource_id``; return the model
        (possibly with metadata filled in, e.g. ``embedding_dimension``).

        Raise :class:`stackd.errors.NotFound` naming the models the upstream does serve
        (and how to get the missing one, e.g. ``ollama pull NAME``)."""
        ...

    async def openai_chat_completion(self, params: dict[str, Any], ctx: CallContext) -> OpenAIResult: ...

    async def openai_completion(self, params: dict[str, Any], ctx: CallContext) -> OpenAIResult: ...

    async def openai_embeddings(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]: ...


class InferenceRouting(Protocol):
    """What the core's inference router offers: the provider calls, with ``params["model"]``
    resolved through the registry (visibility, model type, readiness) to its provider and its
    ``provider_resource_id``. A provider that ``requires`` inference receives this, so its calls
    go through the same checks as a client's. ``loc`` is where the model id sits in the
    caller's request, for error paths."""

    async def openai_chat_completion(
        self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model", store: bool = True,
        guard: bool = True,
    ) -> OpenAIResult:
        """``guard=False``: skip the model's guardrails (what a shield's own model call passes)."""
        ...

    async def openai_completion(
        self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model"
    ) -> OpenAIResult: ...

    async def openai_embeddings(
        self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model", dimensions_loc: str = "$.dimensions"
    ) -> dict[str, Any]: ...


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Close a provider's stream (its ``aclose()``, if it has one): how the upstream request of a
    stream nobody reads any more is released."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
