"""Routers: resolve a model or shield through the registry and call its provider.

A router is also what a provider that depends on an API receives (llama-guard gets the
inference router), so a call from a plugin goes through the same resolution as a client's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from stackd import metrics
from stackd.apis.context import CallContext
from stackd.apis.models import Model, Shield
from stackd.apis.safety import flagged_violation
from stackd.auth.policy import owner_json
from stackd.errors import BadRequest, FieldError, NotFound, UpstreamUnavailable, quote_id
from stackd.guardrails import Guardrails, single, violation_answer, violation_chunk
from stackd.inference_store.assemble import weight
from stackd.inference_store.normalise import storable
from stackd.observe import current
from stackd.registry import Registry
from stackd.relabel import Relabelled

__all__ = ["InferenceRouter", "SafetyRouter", "StoreHook", "not_ready_reason"]

log = logging.getLogger("stackd.routing")

StoreHook = Callable[[dict[str, Any], list[Any], int, str | None], None]
"""Called with (chat.completion body, input messages, their weight in bytes, roughly, owner JSON) once a
completion is whole; must not block. What it raises is logged, never passed to the client: the
answer does not depend on the store."""

DEFAULT_MAX_STORED_BYTES = 4 * 1024 * 1024


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
    def __init__(
        self,
        registry: Registry,
        providers: Mapping[str, Any],
        store: StoreHook | None = None,
        *,
        max_stored_bytes: int = DEFAULT_MAX_STORED_BYTES,
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.store = store
        self.max_stored_bytes = max_stored_bytes
        self.guardrails: Guardrails | None = None  # set by open_stack once the safety router exists

    async def resolve(self, model_id: Any, ctx: CallContext, want: str, loc: str = "$.model") -> tuple[Model, Any]:
        if not isinstance(model_id, str) or not model_id:
            raise BadRequest(f"{loc[2:]} is required: the identifier of a registered model",
                             [FieldError(loc, "required field missing" if model_id is None else "expected a string")])
        model = await self.registry.get_model(model_id, ctx.caller)
        if model.model_type != want:
            raise BadRequest(
                f"model {quote_id(model_id)} is an {model.model_type} model and cannot serve this call "
                f"(it needs an {want} model)",
                [FieldError(loc, f"expected an {want} model")],
            )
        impl = self.providers[model.provider_id]
        _ready(model.provider_id, impl)
        obs = current.get()
        if obs is not None:
            obs.served_model(model.identifier)
        return model, impl

    async def _call(self, method: str, want: str, params: dict[str, Any], ctx: CallContext, loc: str,
                    model: Model | None = None) -> tuple[Model, Any]:
        """Resolve ``params["model"]`` and call the provider with its own name for the model."""
        if model is None:
            model, impl = await self.resolve(params.get("model"), ctx, want, loc)
        else:
            impl = self.providers[model.provider_id]
        call = getattr(impl, method)  # present and async: checked when the provider was built
        upstream = dict(params)
        upstream["model"] = model.provider_resource_id
        result = await call(upstream, ctx)
        if isinstance(result, dict):
            result["model"] = model.identifier
            obs = current.get()
            if obs is not None and obs.model == model.identifier:
                obs.usage(result.get("usage"))
        return model, result

    async def openai_chat_completion(
        self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model", store: bool = True,
        guard: bool = True,
    ) -> Any:
        """``store=False`` for calls that are not OpenAI chat completions of a client (native routes);
        ``guard=False`` for a shield's own calls (a guard model is not guarded by itself)."""
        model, _ = await self.resolve(params.get("model"), ctx, "llm", loc)
        if guard and model.guarded and self.guardrails is not None:
            return await self._guarded_chat(model, params, ctx, loc, store)
        model, result = await self._call("openai_chat_completion", "llm", params, ctx, loc, model)
        return self._answer(model, result, params, store, ctx)

    async def _guarded_chat(self, model: Model, params: dict[str, Any], ctx: CallContext, loc: str,
                            store: bool) -> Any:
        guardrails = self.guardrails
        assert guardrails is not None
        messages = params.get("messages") or []
        stream = bool(params.get("stream"))
        n = params.get("n")
        if model.output_shields and isinstance(n, int) and n > 1:
            # The output shields judge one answer; the other choices would go out unjudged.
            raise BadRequest(f"model {quote_id(model.identifier)} has output shields, which judge one answer: "
                             "n must be 1", [FieldError("$.n", "must be 1 for a model with output shields")])
        violation = await guardrails.check(model.input_shields, messages, ctx, "input")
        if violation is not None:
            answer = violation_answer(model.identifier, violation)
            return single(violation_chunk(answer, violation)) if stream else answer
        model, result = await self._call("openai_chat_completion", "llm", params, ctx, loc, model)
        if model.output_shields:
            if isinstance(result, dict):
                violation = await guardrails.check(
                    model.output_shields, [*messages, _answer_message(result)], ctx, "output")
                if violation is not None:
                    result = violation_answer(model.identifier, violation)
            else:
                result = guardrails.guard_stream(model, messages, result, ctx)
        return self._answer(model, result, params, store, ctx)

    def _answer(self, model: Model, result: Any, params: dict[str, Any], store: bool, ctx: CallContext) -> Any:
        store = store and self.store is not None
        messages = params.get("messages") or []
        # The owner is recorded with the completion, so reading it back follows access_policy.
        owner = owner_json(ctx.caller) if store else None
        if isinstance(result, dict):
            if store:
                self._store_answer(result, messages, model.identifier, owner)
            return result
        return self._relabel(result, model.identifier, messages if store else None, owner)

    def _store_answer(self, completion: dict[str, Any], messages: list[Any], model: str, owner: str | None) -> None:
        kept = _weigh(completion.get("choices"), self.max_stored_bytes)
        if kept is None:
            log.warning("chat completion %.80r of model %r is not stored: it passed "
                        "server.max_stored_completion_bytes (%d)", completion.get("id"), model,
                        self.max_stored_bytes)
            return
        self._keep(completion, messages, model, kept, owner)

    def _keep(self, completion: Any, messages: list[Any], model: str, kept: int, owner: str | None) -> None:
        """Hand one completion to the store; a record it cannot keep is one log line, no more."""
        if self.store is None:
            return
        try:
            self.store(storable(completion, model), messages, kept + weight(messages), owner)
        except (ValueError, RuntimeError) as exc:
            log.warning("a chat completion of model %r was not stored: %s", model, exc)
        except Exception:
            log.exception("a chat completion of model %r was not stored", model)

    async def openai_completion(self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model") -> Any:
        model, _ = await self.resolve(params.get("model"), ctx, "llm", loc)
        if model.guarded:
            # Text completions have no conversation to give a shield: a guarded model is served
            # only where its shields run (listed at start), never around them.
            raise BadRequest(
                f"model {quote_id(model.identifier)} is guarded by shields, which run on chat completions "
                "only; use /v1/chat/completions or /v1/inference/chat-completion",
                [FieldError(loc, "a guarded model: use chat completions")],
            )
        model, result = await self._call("openai_completion", "llm", params, ctx, loc, model)
        return result if isinstance(result, dict) else self._relabel(result, model.identifier, None)

    async def openai_embeddings(
        self, params: dict[str, Any], ctx: CallContext, *, loc: str = "$.model", dimensions_loc: str = "$.dimensions"
    ) -> dict[str, Any]:
        model, _ = await self.resolve(params.get("model"), ctx, "embedding", loc)
        _check_dimensions(model, params.get("dimensions"), dimensions_loc)
        _, result = await self._call("openai_embeddings", "embedding", params, ctx, loc, model)
        return result  # type: ignore[no-any-return]

    def _relabel(
        self, chunks: AsyncIterator[dict[str, Any]], identifier: str, store_with: list[Any] | None,
        owner: str | None = None,
    ) -> Relabelled:
        """The provider's chunks under the client's model name; with ``store_with`` (the input
        messages), the stream is stored once it ran to its end (:class:`stackd.relabel.Relabelled`)."""
        keep = None
        if store_with is not None:
            def keep(body: dict[str, Any], kept: int) -> None:
                self._keep(body, store_with, identifier, kept, owner)
        return Relabelled(chunks, identifier, keep, self.max_stored_bytes)


def _answer_message(completion: dict[str, Any]) -> dict[str, Any]:
    """The assistant message of a whole answer, for the output shields."""
    try:
        content = completion["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        content = None
    return {"role": "assistant", "content": content if isinstance(content, str | list) else ""}


def _weigh(choices: Any, budget: int) -> int | None:
    """What the choices of a whole answer weigh, or None when that is over ``budget``."""
    if not isinstance(choices, list):
        return 0
    total = 0
    for choice in choices:
        total += weight(choice)
        if total > budget:
            return None
    return total


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

    async def resolve(self, shield_id: Any, ctx: CallContext, *, guardrail: bool = False) -> tuple[Shield, Any]:
        if not isinstance(shield_id, str) or not shield_id:
            raise BadRequest("shield_id is required", [FieldError("$.shield_id", "required field missing")])
        # A guardrail runs for the model it guards: the caller's access to the shield is not asked.
        shield = await self.registry.get_shield(shield_id, None if guardrail else ctx.caller)
        impl = self.providers[shield.provider_id]
        _ready(shield.provider_id, impl)
        return shield, impl

    async def run_shield(
        self, shield_id: str, messages: list[dict[str, Any]], params: dict[str, Any], ctx: CallContext,
        *, guardrail: bool = False,
    ) -> dict[str, Any]:
        shield, impl = await self.resolve(shield_id, ctx, guardrail=guardrail)
        try:
            result: dict[str, Any] = await impl.run_shield(shield, messages, params, ctx)
        except Exception:
            metrics.shield_verdict(shield.identifier, "error")
            raise
        # The verdict as guardrails read it: only warn and error levels stop an answer.
        metrics.shield_verdict(shield.identifier, "pass" if flagged_violation(result) is None else "violation")
        return result

    async def shield_for(self, name: str, ctx: CallContext) -> str:
        try:
            return (await self.registry.get_shield(name, ctx.caller)).identifier
        except NotFound:
            for shield in await self.registry.list_shields(ctx.caller):
                if shield.provider_resource_id == name:
                    return shield.identifier
        raise NotFound(f"no shield {quote_id(name)} and no shield that uses a model of that name; "
                       "GET /v1/shields lists the available ones")
