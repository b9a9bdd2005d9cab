"""Guardrails on inference: a model's ``input_shields`` run before its provider is called, its
``output_shields`` on the answer, streamed or not (docs/safety.md).

A violation answers the shield's ``user_message`` in the place of the model's text, with
``finish_reason: "content_filter"`` and a ``violation`` field naming the shield; the unsafe text
never goes out. A stream is held back by at most ``window`` characters: each time that much new
text has come, the whole answer so far is checked, and only then is the held part sent on.

Only guarded models come here: the router checks ``model.guarded`` once per request, so an
unguarded model's answers and chunks pass exactly as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from stackd.apis.context import CallContext
from stackd.apis.inference import close_stream
from stackd.apis.models import Model
from stackd.apis.safety import flagged_violation
from stackd.errors import BadRequest, NotFound, StackdError, UpstreamUnavailable, quote_id
from stackd.registry import Registry

__all__ = ["GuardrailGap", "Guardrails", "check_and_list", "single", "violation_answer", "violation_chunk"]

log = logging.getLogger("stackd.guardrails")

class Guardrails:
    def __init__(self, registry: Registry, safety: Any, window: int) -> None:
        self.registry = registry
        self.safety = safety  # the SafetyRouter
        self.window = window

    async def check(self, shields: tuple[str, ...], messages: list[Any], ctx: CallContext,
                    stage: str) -> dict[str, Any] | None:
        """The first violation of ``shields`` on ``messages`` (as ``{shield_id, stage, ...}``), or None."""
        for shield_id in shields:
            try:
                answer = await self.safety.run_shield(shield_id, messages, {}, ctx, guardrail=True)
            except StackdError as exc:
                if isinstance(exc, BadRequest):
                    raise  # about the client's request (nothing a shield can judge): theirs to fix
                # Anything else is the shield's backend failing (an upstream's 4xx included): a 404
                # or 401 passed on would read as being about the client's model or token.
                if await self._fails_open(shield_id, ctx):
                    log.warning("guardrail %s (%s) failed and is open, the text passes unchecked: %s",
                                quote_id(shield_id), stage, exc.message)
                    continue
                raise UpstreamUnavailable(
                    f"the {stage} guardrail {quote_id(shield_id)} could not check this request: {exc.message}"
                ) from None
            violation = flagged_violation(answer)
            if violation is not None:
                return {"shield_id": shield_id, "stage": stage, **violation}
        return None

    async def _fails_open(self, shield_id: str, ctx: CallContext) -> bool:
        try:
            return (await self.registry.get_shield(shield_id, None)).on_failure == "open"
        except NotFound:
            return False  # a shield that is gone cannot have said "open"

    async def guard_stream(
        self, model: Model, messages: list[Any], chunks: AsyncIterator[dict[str, Any]], ctx: CallContext
    ) -> AsyncIterator[dict[str, Any]]:
        """The provider's chunks, each sent on only once the text up to it was checked."""
        held: list[dict[str, Any]] = []
        text: list[str] = []
        fresh = 0
        last: dict[str, Any] | None = None
        try:
            async for chunk in chunks:
                held.append(chunk)
                last = chunk
                piece = _delta_text(chunk)
                if piece:
                    text.append(piece)
                    fresh += len(piece)
                if fresh >= self.window:
                    fresh = 0
                    violation = await self._check_answer(model, messages, "".join(text), ctx)
                    if violation is not None:
                        yield violation_chunk(last, violation)
                        return
                    for kept in held:
                        yield kept
                    held.clear()
            if fresh or held:
                violation = await self._check_answer(model, messages, "".join(text), ctx) if fresh else None
                if violation is not None:
                    yield violation_chunk(last or {}, violation)
                    return
                for kept in held:
                    yield kept
        finally:
            await close_stream(chunks)

    async def _check_answer(self, model: Model, messages: list[Any], text: str,
                            ctx: CallContext) -> dict[str, Any] | None:
        return await self.check(model.output_shields, [*messages, {"role": "assistant", "content": text}],
                                ctx, "output")


def _delta_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list):
        return ""
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def violation_answer(model: str, violation: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` that says the shield's message instead of the model's."""
    return {
        "id": "chatcmpl-guardrail",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": violation.get("user_message") or ""},
                     "logprobs": None, "finish_reason": "content_filter"}],
        "violation": violation,
    }


def violation_chunk(like: dict[str, Any], violation: dict[str, Any]) -> dict[str, Any]:
    """The last chunk of a stream a shield stopped: the shield's message, ``content_filter``."""
    return {
        "id": like.get("id", "chatcmpl-guardrail"),
        "object": "chat.completion.chunk",
        "created": like.get("created", 0),
        "model": like.get("model", ""),
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": violation.get("user_message") or ""},
                     "logprobs": None, "finish_reason": "content_filter"}],
        "violation": violation,
    }


async def single(chunk: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A stream of one chunk: the answer to a streamed request whose input was refused."""
    yield chunk


class GuardrailGap(Exception):
    """A guarded model that some route could not guard: the server does not start."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


CHAT_ROUTES = "POST /v1/chat/completions, /v1/openai/v1/chat/completions, /v1/inference/chat-completion"
REFUSED_ROUTES = "/v1/completions, /v1/openai/v1/completions, /v1/inference/completion"


async def check_and_list(registry: Registry, window: int) -> list[str]:
    """The start-up listing of guarded models (one line each); raises :class:`GuardrailGap` when a
    model names a shield the server does not have, or is not a chat model: no route could then
    apply its shields, and serving it would be a silent gap."""
    shields = {s.identifier for s in await registry.shields.load() if s.provider_id in registry.providers}
    lines: list[str] = []
    gaps: list[str] = []
    for model in await registry.models.load():
        if not model.guarded or model.provider_id not in registry.providers:
            continue
        missing = [s for s in (*model.input_shields, *model.output_shields) if s not in shields]
        if missing:
            gaps.append(f"model {quote_id(model.identifier)} is guarded by {', '.join(map(quote_id, missing))}, "
                        "which this server does not have (check shields: and the safety providers)")
        elif model.model_type != "llm":
            gaps.append(f"model {quote_id(model.identifier)} is an {model.model_type} model: no route "
                        "applies shields to it; remove its input_shields/output_shields")
        else:
            lines.append(
                f"guardrails of model {quote_id(model.identifier)}: input {list(model.input_shields)}, "
                f"output {list(model.output_shields)} on {CHAT_ROUTES} (stream and not; streamed output "
                f"checked every {window} characters and at the end); refused with 400 on {REFUSED_ROUTES}"
            )
    if gaps:
        raise GuardrailGap("; ".join(gaps))
    return lines
