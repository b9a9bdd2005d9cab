"""The ``inline::llama-guard`` safety provider."""

from __future__ import annotations

from typing import Any

from stackd import CallContext, InferenceRouting, Shield
from stackd.errors import BadRequest, FieldError, NotFound, UpstreamBadResponse, UpstreamUnavailable
from stackd_provider_llama_guard.config import LlamaGuardConfig
from stackd_provider_llama_guard.prompt import CATEGORIES, GUARD_MODELS, build_prompt, parse_verdict

__all__ = ["CANNED_RESPONSE", "LlamaGuardSafetyProvider"]

# What Llama Stack answers a user whose conversation was judged unsafe; clients show it as is.
CANNED_RESPONSE = "I can't answer that. Can I help with something else?"


class LlamaGuardSafetyProvider:
    def __init__(self, config: LlamaGuardConfig, inference: InferenceRouting) -> None:
        self.config = config
        self.inference = inference
        self.excluded = frozenset(config.excluded_categories)

    def __repr__(self) -> str:
        return f"LlamaGuardSafetyProvider(model={self.config.model!r}, excluded={sorted(self.excluded)})"

    async def register_shield(self, shield: Shield) -> Shield:
        model = shield.provider_resource_id
        if model not in GUARD_MODELS and model != self.config.model:
            accepted = sorted(GUARD_MODELS | ({self.config.model} if self.config.model else set()))
            raise BadRequest(
                f"shield {shield.identifier!r}: inline::llama-guard cannot use model {model!r}; give as "
                f"provider_shield_id one of {', '.join(accepted)}, or set the provider's config.model",
                [FieldError("$.provider_shield_id", "not a Llama Guard model")],
            )
        return shield

    async def run_shield(
        self, shield: Shield, messages: list[dict[str, Any]], params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        try:
            prompt = build_prompt(messages, self.excluded)
        except ValueError as exc:
            raise BadRequest(f"cannot run shield {shield.identifier!r}: {exc}",
                             [FieldError("$.messages", "needs a user or assistant message")]) from None
        body = {
            "model": shield.provider_resource_id,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.config.max_tokens,
            "stream": False,
        }
        try:
            answer = await self.inference.openai_chat_completion(body, ctx, loc="$.shield_id", store=False,
                                                                guard=False)
        except NotFound:
            # The shield exists; its model does not (or not for this caller): a setup problem, and
            # a 404 here would read as "no such shield".
            raise UpstreamUnavailable(
                f"shield {shield.identifier!r} needs model {shield.provider_resource_id!r}, which is not "
                "registered; add it under models: with the inference provider that serves it"
            ) from None
        text = _content(answer)
        try:
            codes = parse_verdict(text) if text is not None else None
        except ValueError as exc:
            raise UpstreamBadResponse(
                f"shield {shield.identifier!r}: model {shield.provider_resource_id!r} did not answer as Llama "
                f"Guard 3 does ({exc}); check that it is a Llama Guard model"
            ) from None
        if text is None:
            raise UpstreamBadResponse(
                f"shield {shield.identifier!r}: model {shield.provider_resource_id!r} answered without text"
            )
        if codes is None or set(codes) <= self.excluded:
            return {"violation": None}
        violated = [c for c in codes if c not in self.excluded]
        return {
            "violation": {
                "violation_level": "error",
                "user_message": CANNED_RESPONSE,
                "metadata": {
                    "violation_type": ",".join(violated),
                    "categories": [CATEGORIES[c] for c in violated],
                },
            }
        }


def _content(answer: Any) -> str | None:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None
