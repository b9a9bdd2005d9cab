"""The safety API: what a safety provider implements, and the run-shield request.

A safety provider checks messages against a shield (a guardrail at Bedrock, a Llama Guard
model served by an inference provider...). Messages reach it as the client sent them, in
the Llama Stack shape, once the request is validated.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

from stackd.apis.context import CallContext
from stackd.apis.models import Shield
from stackd.apis.native.types import Message
from stackd.convert import structure

__all__ = ["flagged_violation", "message_text", "RunShieldRequest", "SafetyProvider", "SafetyRouting", "run_shield"]

# The levels that stop an answer; ``info`` is reported and lets it through.
BLOCKING_LEVELS = ("warn", "error")


def flagged_violation(answer: Any) -> dict[str, Any] | None:
    """The violation of a run-shield answer when it stops an answer (``warn`` or ``error``), else None:
    how guardrails, moderations and the shield-verdict metric all read a verdict."""
    violation = answer.get("violation") if isinstance(answer, dict) else None
    if isinstance(violation, dict) and violation.get("violation_level") in BLOCKING_LEVELS:
        return violation
    return None


@runtime_checkable
class SafetyProvider(Protocol):
    async def run_shield(
        self, shield: Shield, messages: list[dict[str, Any]], params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        """``{"violation": None}`` or ``{"violation": {"violation_level": "info" | "warn" | "error",
        "user_message": str, "metadata": {...}}}``; ``shield.provider_resource_id`` is the
        provider's own name for the shield, ``params`` the request's ``params`` (may be empty).
        A provider that cannot reach its backend raises :class:`stackd.errors.UpstreamUnavailable`."""
        ...


# Optional: ``async def register_shield(self, shield: Shield) -> Shield`` checks (and may
# complete) a shield when it is registered; raise NotFound when the backend lacks it.


class SafetyRouting(Protocol):
    """What the core's safety router offers: ``shield_id`` resolved through the registry."""

    async def run_shield(
        self, shield_id: str, messages: list[dict[str, Any]], params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]: ...

    async def shield_for(self, name: str, ctx: CallContext) -> str:
        """The id of the shield named ``name``, else of a shield whose model is ``name``; 404 if none."""
        ...


@attrs.frozen
class RunShieldRequest:
    shield_id: str
    messages: list[Message]
    params: dict[str, Any] | None = None


async def run_shield(safety: SafetyRouting, body: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """``POST /v1/safety/run-shield``: the body is checked whole, then the provider gets the
    messages as sent (plain JSON)."""
    req = structure(body, RunShieldRequest)
    return await safety.run_shield(req.shield_id, body["messages"], dict(req.params or {}), ctx)


def message_text(content: Any) -> str:
    """The text of a Llama Stack message's ``content`` as a safety provider receives it: a string,
    a ``{type: text, text}`` item, or a list of items (joined by newlines). Images carry no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type") == "text" else ""
    if isinstance(content, list):
        return "\n".join(t for t in (message_text(c) for c in content) if t)
    return ""
