"""Routers: resolve a model or shield through the registry and call its provider.

A router is also what a provider that depends on an API receives (llama-guard gets the
inference router), so a call from a plugin goes through the same resolution as a client's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from stackd.apis.inference import close_stream
from stackd.apis.models import Model, Shield
from stackd.errors import BadRequest, FieldError, NotImplementedByProvider, UpstreamUnavailable
from stackd.inference_store.assemble import assemble_chat_stream
from stackd.providers.spec import CallContext
from stackd.registry import Registry

__all__ = ["InferenceRouter", "SafetyRouter", "StoreHook", "not_ready_reason"]

log = logging.getLogger("stackd.routing")

StoreHook = Callable[[dict[str, Any], list[Any]], None]
"""Called with (chat.completion body, input messages) once a completion is whole; must not block."""


def _ready(provider_id: str, impl: Any) -> None:
    is_ready = getattr(impl, "is_ready", None)
    if is_ready is not None and not is_ready():
        # A provider that failed for good says why and how to fix it; retrying would not help.
        reason = not_ready_reason(impl)
        if reason is not None:
            raise UpstreamUnavailable(f"provider {provider_id!r} is not ready: {reason}")
        raise UpstreamUnavailable(f"provider {provider_id!r} is not ready yet (still loading); retry shortly",
                                  headers={"Retry-After": "5"})


def not_ready_reason(impl: Any) -> str | None:
    """The optional ``not_ready_reason()`` of a provider whose ``is_ready()`` is False: why it
    cannot serve for good (None: it is still loading)."""
    reason = getattr(impl, "not_ready_reason", None)
    return None if reason is None else reason()


class InferenceRouter:
    def __init__(self, registry: Registry, providers: Mapping[str, Any], store: StoreHook | None = None) -> None:
        self.registry = registry
        self.providers = providers
        self.store = store

    async def resolve(self, model_id: Any, ctx: CallContext, want: str, loc: str = "$.model") -> tuple[Model, Any]:
        if not isinstance(model_id, str) or not model_id:
            raise BadRequest(f"{loc[2:]} is required: the identifier of a registered model",
                             [FieldError(loc, "required field missing" if model_id is None else "expected a string")])
        model = await self.registry.get_model(model_id, ctx.caller)
        if model.model_type != want:
            raise BadRequest(
                f"model {model_id!r} is an {model.model_type} model and cannot serve this call "
                f"(it needs an {want} model)",
                [FieldError(loc, f"expected an {want} model")],
            )
        impl = self.providers[model.provider_id]
        _ready(model.provider_id, impl)
        return model, impl

    async def _call(self, method: str, want: str, params: dict[str, Any], ctx: CallContext, loc: str,
                    model: Model | None = None) -> tuple[Model, Any]:
        """Resolve ``params["model"]`` and call the provider with its own name for the model."""
        if model is None:
            model, impl = await self.resolve(params.get("model"), ctx, want, loc)
        else:
            impl = self.providers[model.provider_id]
        call = getattr(impl, method, None)
        if call is None:
            raise NotImplementedByProvider(f"provider {model.provider_id!r} does not implement {method}")
        upstream = dict(params)
        upstream["model"] = model.provider_resource_id
        result = await call(upstream, ctx)
        if isinstance(result, dict):
            result["model"] = model.identifier
        return model, result

    async def openai_chat_completion(
        self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model", store: bool = True
    ) -> Any:
        """``store=False`` for calls that are not OpenAI chat completions of a client (native routes)."""
        model, result = await self._call("openai_chat_completion", "llm", params, ctx, loc)
        store = store and self.store is not None
        messages = params.get("messages") or []
        if isinstance(result, dict):
            if store:
                self.store(result, messages)  # type: ignore[misc]
            return result
        return self._relabel(result, model.identifier, messages if store else None)

    async def openai_completion(self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model") -> Any:
        model, result = await self._call("openai_completion", "llm", params, ctx, loc)
        return result if isinstance(result, dict) else self._relabel(result, model.identifier, None)

    async def openai_embeddings(
        self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model", dimensions_loc: str = "$.dimensions"
    ) -> dict[str, Any]:
        model, _ = await self.resolve(params.get("model"), ctx, "embedding", loc)
        _check_dimensions(model, params.get("dimensions"), dimensions_loc)
        _, result = await self._call("openai_embeddings", "embedding", params, ctx, loc, model)
        return result  # type: ignore[no-any-return]

    async def _relabel(
        self, chunks: AsyncIterator[dict[str, Any]], identifier: str, store_with: list[Any] | None
    ) -> AsyncIterator[dict[str, Any]]:
        """The provider's chunks under the client's model name; with ``store_with`` (the input
        messages), the stream is stored once it ran to its end, after its last byte went out."""
        keep: list[dict[str, Any]] | None = [] if store_with is not None else None
        try:
            async for chunk in chunks:
                chunk["model"] = identifier
                if keep is not None:
                    keep.append(chunk)
                yield chunk
        finally:
            await close_stream(chunks)
        if keep and self.store is not None and store_with is not None:
            try:
                self.store(assemble_chat_stream(keep), store_with)
            except Exception:
                log.exception("could not store a streamed chat completion")


def _check_dimensions(model: Model, dimensions: Any, loc: str) -> None:
    """Fewer dimensions than the model's, never more: an in-process provider sizes its output by it."""
    if dimensions is None:
        return
    if not isinstance(dimensions, int) or isinstance(dimensions, bool):
        raise BadRequest(f"{loc[2:]} must be an integer", [FieldError(loc, "expected an integer")])
    native = model.metadata.get("embedding_dimension")
    limit = native if isinstance(native, int) and not isinstance(native, bool) and native > 0 else None
    if dimensions < 1 or (limit is not None and dimensions > limit):
        expected = f"from 1 to {limit}" if limit is not None else "of at least 1"
        why = f" (model {model.identifier!r} has {limit} dimensions)" if limit is not None else ""
        raise BadRequest(f"{loc[2:]} must be an integer {expected}{why}; got {dimensions}",
                         [FieldError(loc, f"expected an integer {expected}")])


class SafetyRouter:
    def __init__(self, registry: Registry, providers: Mapping[str, Any]) -> None:
        self.registry = registry
        self.providers = providers

    async def resolve(self, shield_id: Any, ctx: CallContext) -> tuple[Shield, Any]:
        if not isinstance(shield_id, str) or not shield_id:
            raise BadRequest("shield_id is required", [FieldError("$.shield_id", "required field missing")])
        shield = await self.registry.get_shield(shield_id, ctx.caller)
        impl = self.providers[shield.provider_id]
        _ready(shield.provider_id, impl)
        return shield, impl

    async def run_shield(
        self, shield_id: str, messages: list[dict[str, Any]], params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        shield, impl = await self.resolve(shield_id, ctx)
        run = getattr(impl, "run_shield", None)
        if run is None:
            raise NotImplementedByProvider(f"provider {shield.provider_id!r} does not implement run_shield")
        result: dict[str, Any] = await run(shield, messages, params, ctx)
        return result
